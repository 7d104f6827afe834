// Package agent is the kube-ipam node agent: a long-lived process (run by
// kube-ipam-install in the DaemonSet) that serves the ADD and DEL calls the
// kube-ipam plugin process hands it over a unix socket (package wire). It
// runs the very same plugin code (package plugin) as kube-ipam-direct, but
// keeps what every plugin process would set up again: the Go runtime and its
// package initialisation, etcd connections with their TLS handshakes, and
// Kubernetes clients. Anything it cannot serve exactly as the direct path
// would (another protocol version, a malformed call, a file of the config
// it cannot see, too many calls in flight) it declines, and the plugin
// process runs the call itself: the agent adds speed, never a failure mode.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"github.com/spf13/pflag"

	"kubeipam/internal/agent/wire"
	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
	"kubeipam/internal/plugin"
)

// DefaultMaxInFlight bounds the calls the agent runs at once; beyond it,
// calls take the direct path (each then in its own process, as without an
// agent).
const DefaultMaxInFlight = 256

// handshakeTimeout bounds the request and the plugin's Go.
const handshakeTimeout = 5 * time.Second

// Server is the agent.
type Server struct {
	// Socket is the unix socket to listen on.
	Socket string
	// Root is where the node's filesystem is seen ("/" or "" when the
	// agent runs on the node itself): the files a network config names are
	// looked up under it.
	Root string
	// MaxInFlight bounds the calls run at once (default
	// DefaultMaxInFlight).
	MaxInFlight int
	// Log receives the agent's own events (each call logs to its
	// network's logFile, as the plugin does).
	Log *slog.Logger

	slots    chan struct{}
	clients  *clients
	inFlight allocator.InFlight
	wg       sync.WaitGroup
}

// AddFlags registers the agent's flags of kube-ipam-install on fs, into s,
// and returns --agent-only (run only the agent).
func (s *Server) AddFlags(fs *pflag.FlagSet) (agentOnly *bool) {
	fs.StringVar(&s.Socket, "agent-socket", "", "run the node agent on this unix socket, as mounted in this pod (the node's "+wire.DefaultSocket+"); empty = no agent: every plugin call runs kube-ipam-direct")
	fs.IntVar(&s.MaxInFlight, "agent-max-in-flight", DefaultMaxInFlight, "calls the agent runs at once; more take the direct path")
	return fs.Bool("agent-only", false, "run only the node agent (--agent-socket), install nothing")
}

// Serve listens on s.Socket until ctx ends, then stops accepting, removes
// the socket (new calls take the direct path at once) and waits for the
// calls in flight.
func (s *Server) Serve(ctx context.Context) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.MaxInFlight <= 0 {
		s.MaxInFlight = DefaultMaxInFlight
	}
	s.slots = make(chan struct{}, s.MaxInFlight)
	s.clients = newClients()
	defer s.clients.close()
	l, err := listen(s.Socket)
	if err != nil {
		return err
	}
	s.Log.Info("node agent listening", "socket", s.Socket, "root", s.Root, "maxInFlight", s.MaxInFlight)
	stopJanitor := s.clients.janitor(time.Minute)
	defer stopJanitor()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.wg.Wait()
			return fmt.Errorf("node agent socket %s: %w", s.Socket, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
	os.Remove(s.Socket)
	s.wg.Wait()
	s.Log.Info("node agent stopped")
	return nil
}

// listen binds socket, replacing a stale socket file that nobody serves
// (an agent that was killed) but never one that answers.
func listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("node agent socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("node agent socket %s: another agent is serving it", socket)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node agent socket %s: removing the stale one: %w", socket, err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("node agent socket: %w", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	// Only root (the container runtime) may hand calls to the agent.
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("node agent socket %s: %w", socket, err)
	}
	return l, nil
}

func (s *Server) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	dec, enc := json.NewDecoder(conn), json.NewEncoder(conn)
	var req wire.Request
	if err := dec.Decode(&req); err != nil {
		return
	}
	call, reason := s.admit(&req)
	if reason != "" {
		enc.Encode(wire.Answer{Reason: reason})
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		enc.Encode(wire.Answer{Reason: fmt.Sprintf("%d calls in flight", s.MaxInFlight)})
		return
	}
	if err := enc.Encode(wire.Answer{Accept: true}); err != nil {
		return
	}
	var g wire.Go
	if err := dec.Decode(&g); err != nil || !g.Go {
		return // the plugin gave up waiting and runs the call itself
	}
	conn.SetDeadline(time.Time{})
	resp := s.run(call)
	if err := enc.Encode(resp); err != nil {
		s.Log.Warn("the plugin process went away before the result of its call", "command", call.command, "container", call.args.ContainerID, "err", err)
	}
}

// admitted is a call the agent serves.
type admitted struct {
	command string
	args    *skel.CmdArgs
	net     *config.Network
}

// admit returns the call, or why the agent leaves it to the direct path:
// every check the CNI library and the plugin make before they would touch
// the store, so that what the agent runs fails only where the direct path
// would fail the same way, with the same message.
func (s *Server) admit(req *wire.Request) (*admitted, string) {
	if req.Version != wire.Version {
		return nil, fmt.Sprintf("protocol version %d, agent speaks %d", req.Version, wire.Version)
	}
	env := req.Env
	cmd := env["CNI_COMMAND"]
	if cmd != "ADD" && cmd != "DEL" {
		return nil, fmt.Sprintf("CNI_COMMAND %q is served by the plugin itself", cmd)
	}
	for _, k := range []string{"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"} {
		if env[k] == "" {
			return nil, k + " missing"
		}
	}
	if cmd == "ADD" && env["CNI_NETNS"] == "" {
		return nil, "CNI_NETNS missing"
	}
	if err := utils.ValidateContainerID(env["CNI_CONTAINERID"]); err != nil {
		return nil, err.Error()
	}
	if err := utils.ValidateInterfaceName(env["CNI_IFNAME"]); err != nil {
		return nil, err.Error()
	}
	var named struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(req.Stdin, &named); err != nil || named.Name == "" {
		return nil, "network config without a name"
	}
	if err := utils.ValidateNetworkName(named.Name); err != nil {
		return nil, err.Error()
	}
	confVersion, err := (&cniversion.ConfigDecoder{}).Decode(req.Stdin)
	if err != nil {
		return nil, err.Error()
	}
	if verr := (&cniversion.Reconciler{}).Check(confVersion, cniversion.All); verr != nil {
		return nil, verr.Details()
	}
	n, err := config.Parse(req.Stdin)
	if err != nil {
		return nil, err.Error()
	}
	for _, f := range n.HostFiles() {
		p := filepath.Join(s.root(), *f.Path)
		if f.Written {
			p = filepath.Dir(p)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Sprintf("%s: %v", f.Key, err)
		}
	}
	return &admitted{command: cmd, net: n, args: &skel.CmdArgs{
		ContainerID: env["CNI_CONTAINERID"], Netns: env["CNI_NETNS"], IfName: env["CNI_IFNAME"],
		Args: env["CNI_ARGS"], Path: env["CNI_PATH"], NetnsOverride: env["CNI_NETNS_OVERRIDE"],
		StdinData: req.Stdin,
	}}, ""
}

func (s *Server) root() string {
	if s.Root == "" {
		return "/"
	}
	return s.Root
}

// run runs an admitted call with the plugin's code and returns what the
// plugin process would have printed and exited with.
func (s *Server) run(a *admitted) *wire.Response {
	var out bufferWriter
	p := plugin.Default()
	p.Out = &out
	p.Pods = s.clients.podGetter
	p.Etcd = s.clients.etcd
	p.Kube = s.clients.kube
	p.InFlight = &s.inFlight
	if s.root() != "/" {
		p.Root = s.root()
	}
	var err error
	if a.command == "ADD" {
		err = p.Add(a.args)
	} else {
		err = p.Del(a.args)
	}
	if err == nil {
		return &wire.Response{Stdout: out.b}
	}
	var e *types.Error
	if !errors.As(err, &e) {
		e = types.NewError(types.ErrInternal, err.Error(), "")
	}
	b, merr := json.MarshalIndent(e, "", "    ")
	if merr != nil {
		return &wire.Response{Stderr: []byte(merr.Error()), Code: 1}
	}
	return &wire.Response{Stdout: b, Code: 1}
}

type bufferWriter struct{ b []byte }

func (w *bufferWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
