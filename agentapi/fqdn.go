package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/l7gate/l7gate/agentapi/proxyapi"
)

// FQDNAnswer is a DNS answer the DNS proxy saw for a name a toFQDNs
// selector matches (POST /fqdn); package proxyapi owns it.
type FQDNAnswer = proxyapi.FQDNAnswer

// FQDNClient posts DNS answers to the agent (package proxyapi's).
type FQDNClient = proxyapi.FQDNClient

// NewFQDNClient returns a client of the agent's API socket (StatusSocket).
func NewFQDNClient(sock string) *FQDNClient { return proxyapi.NewFQDNClient(sock) }

// FQDNLearner is implemented by a Backend that resolves toFQDNs through
// the DNS proxy's answers: LearnFQDN returns once the datapath admits
// connections to the answer's addresses (or fails; ctx bounds it).
type FQDNLearner interface {
	LearnFQDN(ctx context.Context, a FQDNAnswer) error
}

// maxFQDNAnswer bounds a POST /fqdn body (a name and at most a few
// hundred addresses).
const maxFQDNAnswer = 64 << 10

func fqdnHandler(l FQDNLearner) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxFQDNAnswer+1))
		if err != nil || len(body) > maxFQDNAnswer {
			http.Error(w, fmt.Sprintf("fqdn answer: unreadable or larger than %d bytes", maxFQDNAnswer), http.StatusBadRequest)
			return
		}
		var a FQDNAnswer
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			http.Error(w, "fqdn answer: "+err.Error(), http.StatusBadRequest)
			return
		}
		if dec.More() {
			http.Error(w, "fqdn answer: data after the answer", http.StatusBadRequest)
			return
		}
		if err := l.LearnFQDN(r.Context(), a); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
