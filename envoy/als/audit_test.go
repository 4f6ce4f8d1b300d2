package als

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/flow"
)

// TestRecordOfAudit: a rule set in audit mode (enforced rules allow under
// envoy.AuditPolicyID, the real rules run as shadow rules): a shadow
// denial is verdict audit, a shadow allow is allowed by the matching rule;
// a shadow result without the audit policy changes nothing.
func TestRecordOfAudit(t *testing.T) {
	md := func(policyID, shadow, shadowID string) *corev3.Metadata {
		f := map[string]any{keyEngineResult: "allowed", keyEffectivePolicyID: policyID, keyShadowResult: shadow}
		if shadowID != "" {
			f[keyShadowPolicyID] = shadowID
		}
		s, err := structpb.NewStruct(f)
		if err != nil {
			t.Fatal(err)
		}
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{RBACMetadataNamespace: s}}
	}
	r := RecordOf(entry(corev3.RequestMethod_PUT, "/v1/exhaust-port", 200, md(envoy.AuditPolicyID, "denied", ""), "via_upstream", nil))
	if r.Verdict != flow.VerdictAudit || len(r.DecidedBy) != 1 || r.DecidedBy[0].Kind != flow.KindDefaultDeny || !r.DecidedBy[0].Audit {
		t.Errorf("shadow denial: %+v", r)
	}
	r = RecordOf(entry(corev3.RequestMethod_POST, "/v1/request-landing", 200, md(envoy.AuditPolicyID, "allowed", "cnp:default/rule1:spec.ingress[0].http[0]"), "via_upstream", nil))
	if r.Verdict != flow.VerdictAllowed || r.DecidedBy[0].Policy != "default/rule1" || r.DecidedBy[0].L7 != "http[0]" {
		t.Errorf("shadow allow: %+v", r)
	}
	r = RecordOf(entry(corev3.RequestMethod_POST, "/x", 200, md("cnp:default/rule1:spec.ingress[0].http[0]", "denied", ""), "via_upstream", nil))
	if r.Verdict != flow.VerdictAllowed {
		t.Errorf("enforced allow with a shadow denial: %+v", r)
	}
}
