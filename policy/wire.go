package policy

import (
	"encoding/json"
)

// Wire types mirror the YAML/JSON of the objects l7gate reads. They are
// decoded strictly (unknown fields are errors) except where marked lenient,
// then validated and normalised into the model in model.go.

// ObjectMeta is the subset of Kubernetes metadata l7gate reads.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func (*ObjectMeta) lenient() {}

type typeMeta struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
}

func (*typeMeta) lenient() {}

type wireCNP struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Metadata   ObjectMeta  `json:"metadata"`
	Spec       *wireRule   `json:"spec"`
	Specs      []*wireRule `json:"specs"`
	Status     any         `json:"status"`
	// Description outside spec is not in Cilium's schema (the API server
	// prunes it); several Cilium examples have it. Accepted and ignored,
	// with a warning.
	Description any `json:"description"`
}

type wireDefaultDeny struct {
	Ingress *bool `json:"ingress"`
	Egress  *bool `json:"egress"`
}

type wireRule struct {
	EndpointSelector  *LabelSelector   `json:"endpointSelector"`
	NodeSelector      *LabelSelector   `json:"nodeSelector"`
	Ingress           []wireIngress    `json:"ingress"`
	IngressDeny       []wireIngress    `json:"ingressDeny"`
	Egress            []wireEgress     `json:"egress"`
	EgressDeny        []wireEgress     `json:"egressDeny"`
	Labels            []any            `json:"labels"`
	Description       string           `json:"description"`
	EnableDefaultDeny *wireDefaultDeny `json:"enableDefaultDeny"`
	Log               any              `json:"log"`
}

type wireCIDRRule struct {
	CIDR              string         `json:"cidr"`
	CIDRGroupRef      string         `json:"cidrGroupRef"`
	CIDRGroupSelector *LabelSelector `json:"cidrGroupSelector"`
	Except            []string       `json:"except"`
}

type wireICMPField struct {
	Family string       `json:"family"`
	Type   scalarString `json:"type"`
}

type wireICMPRule struct {
	Fields []wireICMPField `json:"fields"`
}

type wireIngress struct {
	FromEndpoints  []LabelSelector `json:"fromEndpoints"`
	FromRequires   []LabelSelector `json:"fromRequires"`
	FromCIDR       []string        `json:"fromCIDR"`
	FromCIDRSet    []wireCIDRRule  `json:"fromCIDRSet"`
	FromEntities   []string        `json:"fromEntities"`
	FromGroups     any             `json:"fromGroups"`
	FromNodes      any             `json:"fromNodes"`
	ToPorts        []wirePortRule  `json:"toPorts"`
	ICMPs          []wireICMPRule  `json:"icmps"`
	Authentication any             `json:"authentication"`
}

type wireEgress struct {
	ToEndpoints    []LabelSelector `json:"toEndpoints"`
	ToRequires     []LabelSelector `json:"toRequires"`
	ToCIDR         []string        `json:"toCIDR"`
	ToCIDRSet      []wireCIDRRule  `json:"toCIDRSet"`
	ToEntities     []string        `json:"toEntities"`
	ToServices     []wireToService `json:"toServices"`
	ToFQDNs        []wireDNSRule   `json:"toFQDNs"`
	ToGroups       any             `json:"toGroups"`
	ToNodes        any             `json:"toNodes"`
	ToPorts        []wirePortRule  `json:"toPorts"`
	ICMPs          []wireICMPRule  `json:"icmps"`
	Authentication any             `json:"authentication"`
}

// wireToService is one toServices entry (Cilium's api.Service).
type wireToService struct {
	K8sService         *wireK8sServiceNamespace `json:"k8sService"`
	K8sServiceSelector *wireK8sServiceSelector  `json:"k8sServiceSelector"`
}

type wireK8sServiceNamespace struct {
	ServiceName string `json:"serviceName"`
	Namespace   string `json:"namespace"`
}

type wireK8sServiceSelector struct {
	Selector  *LabelSelector `json:"selector"`
	Namespace string         `json:"namespace"`
}

type wirePortRule struct {
	Ports          []wirePort   `json:"ports"`
	Rules          *wireL7Rules `json:"rules"`
	TerminatingTLS any          `json:"terminatingTLS"`
	OriginatingTLS any          `json:"originatingTLS"`
	ServerNames    []string     `json:"serverNames"`
	Listener       any          `json:"listener"`
}

type wirePort struct {
	Port     scalarString `json:"port"`
	EndPort  int32        `json:"endPort"`
	Protocol string       `json:"protocol"`
}

type wireL7Rules struct {
	HTTP    []wireHTTPRule      `json:"http"`
	Kafka   []wireKafkaRule     `json:"kafka"`
	DNS     []wireDNSRule       `json:"dns"`
	L7Proto string              `json:"l7proto"`
	L7      []map[string]string `json:"l7"`
}

// wireDNSRule is one rules.dns or toFQDNs entry (Cilium's FQDNSelector).
type wireDNSRule struct {
	MatchName    string `json:"matchName"`
	MatchPattern string `json:"matchPattern"`
}

type wireHTTPRule struct {
	Path          string            `json:"path"`
	Method        string            `json:"method"`
	Host          string            `json:"host"`
	Headers       []string          `json:"headers"`
	HeaderMatches []wireHeaderMatch `json:"headerMatches"`
}

type wireHeaderMatch struct {
	Mismatch string `json:"mismatch"`
	Name     string `json:"name"`
	Secret   any    `json:"secret"`
	Value    string `json:"value"`
}

type wireKafkaRule struct {
	Role       string       `json:"role"`
	APIKey     scalarString `json:"apiKey"`
	APIVersion scalarString `json:"apiVersion"`
	ClientID   string       `json:"clientID"`
	Topic      string       `json:"topic"`
}

// NetworkPolicy (networking.k8s.io/v1).
type wireNP struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       wireNPSpec `json:"spec"`
	Status     any        `json:"status"`
}

type wireNPSpec struct {
	PodSelector *LabelSelector  `json:"podSelector"`
	Ingress     []wireNPIngress `json:"ingress"`
	Egress      []wireNPEgress  `json:"egress"`
	PolicyTypes []string        `json:"policyTypes"`
}

type wireNPIngress struct {
	Ports []wireNPPort `json:"ports"`
	From  []wireNPPeer `json:"from"`
}

type wireNPEgress struct {
	Ports []wireNPPort `json:"ports"`
	To    []wireNPPeer `json:"to"`
}

type wireNPPort struct {
	Protocol *string       `json:"protocol"`
	Port     *scalarString `json:"port"`
	EndPort  *int32        `json:"endPort"`
}

type wireNPPeer struct {
	PodSelector       *LabelSelector `json:"podSelector"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector"`
	IPBlock           *wireIPBlock   `json:"ipBlock"`
}

type wireIPBlock struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except"`
}

// Pod (v1), lenient: only what identities and named ports need.
type wirePod struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Metadata   ObjectMeta    `json:"metadata"`
	Spec       wirePodSpec   `json:"spec"`
	Status     wirePodStatus `json:"status"`
}

func (*wirePod) lenient() {}

type wirePodSpec struct {
	ServiceAccountName string          `json:"serviceAccountName"`
	ServiceAccount     string          `json:"serviceAccount"`
	HostNetwork        bool            `json:"hostNetwork"`
	NodeName           string          `json:"nodeName"`
	Containers         []wireContainer `json:"containers"`
}

func (*wirePodSpec) lenient() {}

type wireContainer struct {
	Name  string              `json:"name"`
	Ports []wireContainerPort `json:"ports"`
}

func (*wireContainer) lenient() {}

type wireContainerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

func (*wireContainerPort) lenient() {}

type wirePodStatus struct {
	PodIP  string      `json:"podIP"`
	PodIPs []wirePodIP `json:"podIPs"`
	Phase  string      `json:"phase"`
}

func (*wirePodStatus) lenient() {}

type wirePodIP struct {
	IP string `json:"ip"`
}

func (*wirePodIP) lenient() {}

// scalarString accepts a string or a number (YAML users write `port: 80` and
// `port: "80"` interchangeably) and keeps its text.
type scalarString string

func (s *scalarString) decodeValue(p fieldPath, v any) error {
	switch x := v.(type) {
	case string:
		*s = scalarString(x)
	case json.Number:
		*s = scalarString(x.String())
	default:
		return p.errorf("expected a string or a number, got %s", describe(v))
	}
	return nil
}

func (s scalarString) String() string { return string(s) }

// Node (v1), lenient: only its addresses.
type wireNode struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   ObjectMeta     `json:"metadata"`
	Status     wireNodeStatus `json:"status"`
}

func (*wireNode) lenient() {}

type wireNodeStatus struct {
	Addresses []wireNodeAddress `json:"addresses"`
}

func (*wireNodeStatus) lenient() {}

type wireNodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

func (*wireNodeAddress) lenient() {}

// EndpointSlice (discovery.k8s.io/v1), lenient: addresses, conditions,
// node names and ports (a Service's backends; the default/kubernetes
// slice's addresses are also the kube-apiserver entity).
type wireEndpointSlice struct {
	APIVersion  string             `json:"apiVersion"`
	Kind        string             `json:"kind"`
	Metadata    ObjectMeta         `json:"metadata"`
	AddressType string             `json:"addressType"`
	Endpoints   []wireEndpoint     `json:"endpoints"`
	Ports       []wireEndpointPort `json:"ports"`
}

func (*wireEndpointSlice) lenient() {}

type wireEndpoint struct {
	Addresses  []string               `json:"addresses"`
	Conditions wireEndpointConditions `json:"conditions"`
	NodeName   *string                `json:"nodeName"`
	TargetRef  *wireObjectReference   `json:"targetRef"`
}

func (*wireEndpoint) lenient() {}

type wireEndpointConditions struct {
	Ready       *bool `json:"ready"`
	Serving     *bool `json:"serving"`
	Terminating *bool `json:"terminating"`
}

func (*wireEndpointConditions) lenient() {}
