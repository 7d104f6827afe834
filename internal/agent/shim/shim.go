// Package shim is the kube-ipam plugin process as the container runtime
// runs it: it hands ADD and DEL to the node agent over its unix socket
// (package wire) and, when no agent takes the call, replaces itself with
// kube-ipam-direct, the whole plugin, installed beside it. It links only the
// standard library and x/sys, so it starts in about a millisecond; the
// direct path costs one exec more than before the agent existed.
package shim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"kubeipam/internal/agent/wire"
)

// DirectBinary is the name of the whole plugin, found beside this one (or
// in a CNI_PATH directory).
const DirectBinary = "kube-ipam-direct"

// cniEnv lists the variables of a CNI call that the agent needs.
var cniEnv = []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_NETNS_OVERRIDE"}

// Main runs one plugin call and returns the exit code (it returns only
// when the agent ran the call or when nothing can run it).
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := os.Getenv("CNI_COMMAND")
	socket := os.Getenv(wire.SocketEnv)
	if socket == "" {
		socket = wire.DefaultSocket
	}
	// Flags (--version, --help) and the verbs the agent does not serve go
	// straight to the direct path, stdin untouched.
	if len(args) > 1 || (cmd != "ADD" && cmd != "DEL") || socket == "off" {
		return direct(args, nil, stdout)
	}
	if ownNetNS(os.Getenv("CNI_NETNS"), os.Getenv("CNI_NETNS_OVERRIDE")) {
		// The CNI library refuses a call for the plugin's own network
		// namespace after running it: only this process can tell.
		return direct(args, nil, stdout)
	}
	data, err := io.ReadAll(stdin)
	if err != nil {
		return fail(stdout, nil, fmt.Sprintf("reading the network config from stdin: %v", err))
	}
	req := wire.Request{Env: map[string]string{}, Stdin: data}
	for _, k := range cniEnv {
		if v, ok := os.LookupEnv(k); ok {
			req.Env[k] = v
		}
	}
	resp, err := wire.Call(socket, req, wire.AcceptTimeout)
	if err != nil {
		// Declined, or the agent went away mid-call (then the direct
		// path is the runtime's retry, made at once).
		return direct(args, data, stdout)
	}
	stdout.Write(resp.Stdout)
	stderr.Write(resp.Stderr)
	return resp.Code
}

// direct replaces this process with kube-ipam-direct. With data, its stdin
// becomes a memory file holding data (this process has read the pipe).
func direct(args []string, data []byte, stdout io.Writer) int {
	path, err := directPath()
	if err != nil {
		return fail(stdout, data, err.Error())
	}
	if data != nil {
		fd, err := unix.MemfdCreate("kube-ipam-stdin", 0)
		if err == nil {
			err = writeAll(fd, data)
		}
		if err == nil {
			_, err = unix.Seek(fd, 0, io.SeekStart)
		}
		if err == nil {
			err = unix.Dup2(fd, 0)
		}
		if err != nil {
			return fail(stdout, data, fmt.Sprintf("passing the network config to %s: %v", path, err))
		}
		unix.Close(fd)
	}
	argv := append([]string{path}, args[1:]...)
	err = syscall.Exec(path, argv, os.Environ())
	return fail(stdout, data, fmt.Sprintf("running %s: %v", path, err))
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// directPath finds kube-ipam-direct beside this binary, else in CNI_PATH.
func directPath() (string, error) {
	var tried []string
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), DirectBinary)
		if isExec(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	for _, dir := range filepath.SplitList(os.Getenv("CNI_PATH")) {
		p := filepath.Join(dir, DirectBinary)
		if dir != "" && isExec(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("kube-ipam: no node agent took the call and %s is not installed (looked at %s): install both binaries of the release into the CNI bin dir", DirectBinary, strings.Join(tried, ", "))
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// fail prints a CNI error (code 11: the call can succeed once the agent
// runs or the binary is installed) and returns the exit code.
func fail(stdout io.Writer, conf []byte, msg string) int {
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	_ = json.Unmarshal(conf, &c)
	b, _ := json.MarshalIndent(struct {
		CNIVersion string `json:"cniVersion,omitempty"`
		Code       int    `json:"code"`
		Msg        string `json:"msg"`
	}{c.CNIVersion, 11, msg}, "", "    ")
	stdout.Write(append(b, '\n'))
	return 1
}

// ownNetNS reports whether the call's network namespace is this process's
// own (as the CNI library's check sees it; an override skips the check).
func ownNetNS(path, override string) bool {
	if path == "" || strings.EqualFold(override, "true") || override == "1" {
		return false
	}
	var a, b unix.Stat_t
	if unix.Stat(path, &a) != nil || unix.Stat("/proc/self/ns/net", &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}
