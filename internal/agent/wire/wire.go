// Package wire is the protocol between the kube-ipam plugin process and the
// node agent (package agent), and the plugin's side of it. It imports
// nothing but the standard library, so that the plugin process that uses it
// starts in a millisecond instead of paying for the etcd, gRPC and
// Kubernetes client packages it forwards to.
//
// One call is one connection to the agent's unix socket:
//
//	plugin → agent  Request  (protocol version, CNI environment, stdin)
//	agent  → plugin Answer   (Accept, or why not)
//	plugin → agent  Go       (the plugin commits to this agent)
//	agent  → plugin Response (stdout, stderr, exit code)
//
// The plugin commits only after the agent accepted within AcceptTimeout, and
// the agent starts the call only after the plugin's Go: so when either side
// is slow, frozen or gone before that point, exactly one of them runs the
// call — the agent, or the plugin's direct path.
package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Version is the protocol version. An agent answers a request of another
// version with a refusal, and the plugin then takes its direct path: a
// plugin and an agent of different releases (an upgrade rolling through the
// DaemonSet) never misunderstand each other.
const Version = 1

// DefaultSocket is where the agent of the DaemonSet listens on the node.
const DefaultSocket = "/run/kube-ipam/agent.sock"

// SocketEnv overrides DefaultSocket for the plugin process; "off" makes the
// plugin always take its direct path.
const SocketEnv = "KUBE_IPAM_AGENT"

// AcceptTimeout bounds how long the plugin waits for the agent to accept a
// call before it takes the direct path instead.
const AcceptTimeout = time.Second

// Request is the call as the container runtime gave it to the plugin.
type Request struct {
	Version int `json:"v"`
	// Env holds the CNI_* variables of the call.
	Env   map[string]string `json:"env"`
	Stdin []byte            `json:"stdin"`
}

// Answer is the agent's reply to a Request.
type Answer struct {
	Accept bool `json:"accept"`
	// Reason says why the agent declined (logged by nobody: the plugin
	// takes the direct path, which reports any error itself).
	Reason string `json:"reason,omitempty"`
}

// Go is the plugin's commitment to the agent.
type Go struct {
	Go bool `json:"go"`
}

// Response is what the plugin process prints and exits with.
type Response struct {
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr,omitempty"`
	Code   int    `json:"code"`
}

// ErrDeclined is returned by Call when the agent is absent, did not accept
// in time, or declined: the call was not run by the agent and the caller
// must run it itself.
var ErrDeclined = errors.New("not run by the node agent")

// Call runs req on the agent listening at socket. An error wrapping
// ErrDeclined means the agent did not and will not run the call. Any other
// error means the agent was committed to and the connection broke before
// its response: the call may or may not have run, as when a plugin process
// is killed; CNI calls are idempotent per container, so the caller may run
// it again.
func Call(socket string, req Request, acceptTimeout time.Duration) (*Response, error) {
	conn, err := net.DialTimeout("unix", socket, acceptTimeout)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDeclined, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(acceptTimeout)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDeclined, err)
	}
	enc, dec := json.NewEncoder(conn), json.NewDecoder(conn)
	req.Version = Version
	if err := enc.Encode(req); err != nil {
		return nil, fmt.Errorf("%w: sending the request: %v", ErrDeclined, err)
	}
	var a Answer
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("%w: no answer from the agent: %v", ErrDeclined, err)
	}
	if !a.Accept {
		return nil, fmt.Errorf("%w: declined: %s", ErrDeclined, a.Reason)
	}
	// Committed from here on: the runtime's own timeout bounds the call.
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDeclined, err)
	}
	if err := enc.Encode(Go{Go: true}); err != nil {
		// The agent did not get the Go, so it does not run the call.
		return nil, fmt.Errorf("%w: sending go: %v", ErrDeclined, err)
	}
	var resp Response
	if err := dec.Decode(&resp); err != nil {
		return nil, fmt.Errorf("the node agent accepted the call but sent no response: %v", err)
	}
	return &resp, nil
}
