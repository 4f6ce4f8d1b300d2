package scale

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Shape of the synthetic cluster.
const (
	namespaces = 20
	apps       = 25 // distinct app labels per namespace: 500 identities
	nsPrefix   = "scale-"
)

func nsName(i int) string   { return fmt.Sprintf("%s%02d", nsPrefix, i%namespaces) }
func nodeName(i int) string { return fmt.Sprintf("node-%04d", i) }
func appName(i int) string  { return fmt.Sprintf("app-%02d", i%apps) }

// podIP gives pod i an address in 10.128.0.0/9 (not routed anywhere: the
// agents only read it).
func podIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", 128+i/65536, (i/256)%256, i%256) }

// nodeIP gives node i an address in 172.16.0.0/12.
func nodeIP(i int) string { return fmt.Sprintf("172.%d.%d.%d", 16+i/65536, (i/256)%256, i%256) }

func podName(i int) string { return fmt.Sprintf("web-%06d", i) }

// newPod is pod i as a Deployment's pod looks after the scheduler bound
// it (the status is written separately, as the kubelet does): container
// with env, resources, probes and the service-account volume, default
// tolerations. Real pods are a few KB of JSON; so are these.
func newPod(i, nodes int) *corev1.Pod {
	hash := fmt.Sprintf("%08x", uint32(i/10)*2654435761)[:8]
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName(i), Namespace: nsName(i),
			GenerateName: "web-" + hash + "-",
			Labels:       map[string]string{"app": appName(i / namespaces), "tier": "backend", "pod-template-hash": hash},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-" + hash,
				UID: types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i/10)), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: corev1.PodSpec{
			NodeName:           nodeName(i % nodes),
			ServiceAccountName: "default",
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example/shop/web:1.27.3", ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "UPSTREAM", Value: "http://api.shop.svc:8080"},
					{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "status.podIP"}}}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3},
				VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access", ReadOnly: true,
					MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}},
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				DefaultMode: ptr.To[int32](420),
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](3607)}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
						Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace",
						FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
				}}}}},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)}},
		},
	}
}

// runningStatus is what the kubelet reports once the pod runs.
func runningStatus(p *corev1.Pod, i int) {
	now := metav1.Now()
	ip := podIP(i)
	p.Status = corev1.PodStatus{
		Phase:    corev1.PodRunning,
		HostIP:   nodeIP(i % 1000000),
		PodIP:    ip,
		PodIPs:   []corev1.PodIP{{IP: ip}},
		QOSClass: corev1.PodQOSBurstable, StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: "PodReadyToStartContainers", Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, Started: ptr.To(true),
			Image: "registry.example/shop/web:1.27.3", ImageID: "registry.example/shop/web@sha256:4f2b7c0e3d1a9f8e6b5c4d3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e",
			ContainerID: fmt.Sprintf("containerd://%064x", i),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
}

// newNode is node i with its addresses and a Ready condition.
func newNode(i int) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i), Labels: map[string]string{
		"kubernetes.io/hostname": nodeName(i), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
}

func nodeStatus(n *corev1.Node, i int) {
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(i)}, {Type: corev1.NodeHostName, Address: nodeName(i)}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
}

// policyRef names scale policy j of a run (runs on one cluster do not
// share policies).
func policyRef(run string, j int) (ns, name string) {
	return nsName(j), fmt.Sprintf("%s-pol-%02d", run, j)
}

// policySpec is policy j at change k: app j may GET /change-k/... of app
// j+1 on port 8080; every agent reports k.
func policySpec(j, k int) map[string]any {
	spec := fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":%q}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":%q}}],
		"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":"/change-%d/.*"}]}}]}]}`,
		appName(j+1), appName(j), k)
	var m map[string]any
	if err := json.Unmarshal([]byte(spec), &m); err != nil {
		panic(err)
	}
	return m
}

func newPolicy(run string, j int) *unstructured.Unstructured {
	ns, name := policyRef(run, j)
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": policySpec(j, 0)}}
}
