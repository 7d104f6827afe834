package meta

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"kubeipam/internal/netattach"
	"kubeipam/internal/tier"
)

// Event reasons. AddedInterface and NoNetworkFound are multus's.
const (
	ReasonAdded          = "AddedInterface"
	ReasonNoNetwork      = "NoNetworkFound"
	ReasonAddFailed      = "FailedAddingInterface"
	ReasonStatusNotWrite = "NetworkStatusNotWritten"
)

// publish tells the cluster what this ADD attached, in Kubernetes mode:
// the k8s.v1.cni.cncf.io/network-status annotation (written once, after
// every attachment succeeded; a failure fails the ADD, because tools such
// as multi-networkpolicy would otherwise see no interface to protect), then
// one AddedInterface Event per interface (best effort). A pod that is gone
// is not an error: nobody will read its status.
func (c *call) publish(plan []step, results []types.Result) error {
	if c.podObj == nil {
		return nil
	}
	var all []netattach.Status
	for i, s := range plan {
		st, err := netattach.Statuses(results[i], s.Network, s.Index == 0, s.IfName)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("[%s:%s]: %v", c.pod.Label(), s.Name, err), "")
		}
		if len(s.Gateways) > 0 {
			for j := range st {
				st[j].Gateway = s.Gateways
			}
		}
		all = append(all, st...)
	}
	value, err := netattach.Encode(all)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	err = c.kubeAPI.SetNetworkStatus(c.ctx, c.pod.Namespace, c.pod.Name, c.podObj.UID, value)
	var nf *NotFoundError
	switch {
	case errors.As(err, &nf):
		c.log.Info("the pod is gone: network-status not written", "err", err)
		return nil
	case err != nil:
		var una *tier.UnavailableError
		if errors.As(err, &una) {
			return err
		}
		return types.NewError(CodePodLookup, err.Error(), "")
	}
	c.log.Debug("network-status written", "interfaces", len(all))
	for i, s := range plan {
		c.event(false, ReasonAdded, fmt.Sprintf("Add %s %s from %s", s.IfName, addresses(results[i]), s.Network))
	}
	return nil
}

// addresses lists a result's addresses with their prefix length, as
// multus's Event does ("[10.188.0.219/16]").
func addresses(r types.Result) string {
	var ips []string
	if res, err := current.NewResultFromResult(r); err == nil {
		for _, ip := range res.IPs {
			ips = append(ips, ip.Address.String())
		}
	}
	return "[" + strings.Join(ips, " ") + "]"
}

// failed records a Warning Event for a failed ADD, with the CNI code and
// message, when the pod is known and the API answered this call (an
// unreachable API gets no Event: it would only add a timeout).
func (c *call) failed(err *types.Error, cause error) {
	if !c.conf.KubernetesMode() || c.pod.Name == "" || c.pod.Namespace == "" {
		return
	}
	var una *tier.UnavailableError
	if errors.As(cause, &una) || err.Code == types.ErrTryAgainLater {
		return
	}
	reason := ReasonAddFailed
	var ne *NetworkError
	if errors.As(cause, &ne) && ne.Missing {
		reason = ReasonNoNetwork
	}
	c.event(true, reason, fmt.Sprintf("CNI error %d: %s", err.Code, err.Msg))
}

// event sends one Event on the pod; failures are logged, never returned.
func (c *call) event(warning bool, reason, msg string) {
	k, err := c.kube()
	if err != nil {
		c.log.Warn("no Event recorded", "reason", reason, "err", err)
		return
	}
	uid := c.pod.UID
	if c.podObj != nil {
		uid = c.podObj.UID
	}
	if err := k.Event(c.ctx, Event{Namespace: c.pod.Namespace, Pod: c.pod.Name, UID: uid, Warning: warning, Reason: reason, Message: msg}); err != nil {
		c.log.Warn("no Event recorded", "reason", reason, "err", err)
	}
}
