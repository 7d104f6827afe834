// Package bench holds kube-ipam's benchmarks (bench_test.go): the real
// plugin binary against a real etcd, compared in the same run with the
// reference host-local plugin, plus micro-benchmarks of the pure allocation
// rules. See README.md; run them with `make bench`.
package bench
