// Command rusage is BenchmarkAdd's meter of a plugin process's peak RSS.
//
// The benchmark cannot read it from its own children's rusage: Go starts a
// child with vfork, and the kernel carries the peak RSS of the memory the
// exec replaced (the benchmark's own, tens of MB) into the child's maxrss.
// This small process stands in between: it runs the program named by
// $BENCH_RUSAGE_BIN with its own stdio and environment (minus its own
// variables), so the exec replaces only this process's few MB, and writes
// the child's maxrss (KiB) to $BENCH_RUSAGE_DIR/$CNI_CONTAINERID. It exits
// with the child's exit code. It uses only package syscall to stay small:
// its own peak RSS is the floor of what it can report, which the benchmark
// measures and prints.
package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	bin, dir := os.Getenv("BENCH_RUSAGE_BIN"), os.Getenv("BENCH_RUSAGE_DIR")
	if bin == "" || dir == "" {
		os.Stderr.WriteString("rusage: BENCH_RUSAGE_BIN and BENCH_RUSAGE_DIR must be set\n")
		os.Exit(2)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BENCH_RUSAGE_") {
			env = append(env, kv)
		}
	}
	pid, err := syscall.ForkExec(bin, []string{bin}, &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2}})
	if err != nil {
		os.Stderr.WriteString("rusage: " + bin + ": " + err.Error() + "\n")
		os.Exit(2)
	}
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err = syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		os.Stderr.WriteString("rusage: wait: " + err.Error() + "\n")
		os.Exit(2)
	}
	name := os.Getenv("CNI_CONTAINERID")
	if name == "" {
		name = "no-container"
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(strconv.FormatInt(ru.Maxrss, 10)+"\n"), 0o644); err != nil {
		os.Stderr.WriteString("rusage: " + err.Error() + "\n")
		os.Exit(2)
	}
	if ws.Signaled() {
		os.Exit(128 + int(ws.Signal()))
	}
	os.Exit(ws.ExitStatus())
}
