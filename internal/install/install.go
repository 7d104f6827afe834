// Package install is kube-ipam-install, the node installer that a DaemonSet
// runs on every node (as multus's and whereabouts's installers do): it puts
// the plugin binaries into the node's CNI bin dir, writes the plugins'
// kubeconfig and etcd TLS files, and installs the network config from a
// ConfigMap, after validating it with the plugins' own parsers, so that a
// bad ConfigMap never reaches a node's /etc/cni/net.d.
//
// It has three modes. By default (--cluster-network=config) the ConfigMap's
// kube-multus meta config is installed as it is. With --cluster-network=auto
// the installer builds the meta config around the node's own cluster network
// config, the first CNI config file in the conf dir, as multus's "auto" mode
// does (auto.go). With --ipam-only it installs only kube-ipam and kube-tier
// and their files, for a cluster that already runs multus, and writes no
// network config at all.
//
// Every write is atomic (temporary file in the same directory, fsync,
// chmod, rename, fsync of the directory) and skipped when the content is
// already there. Nothing is ever removed: on SIGTERM the installer exits 0
// and leaves the node as it is, because removing the CNI config while the
// DaemonSet is being upgraded would stop every pod sandbox on the node from
// getting a network.
package install

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Cluster network modes (--cluster-network); any other value is the file
// name of the cluster network's config in the conf dir (auto mode pinned to
// that file).
const (
	// ClusterNetworkConfig installs the ConfigMap's config as it is: its
	// delegates[0] is the cluster network.
	ClusterNetworkConfig = "config"
	// ClusterNetworkAuto makes the node's first CNI config file
	// delegates[0] of the installed config.
	ClusterNetworkAuto = "auto"
)

// The binaries each mode installs unless --binaries says otherwise.
var (
	DefaultBinaries  = []string{"kube-ipam-direct", "kube-ipam", "kube-multus", "kube-tier"}
	IPAMOnlyBinaries = []string{"kube-ipam-direct", "kube-ipam", "kube-tier"}
)

// Options are the installer's flags. Paths under /host are the node's
// directories as mounted into the installer pod (hostPath volumes).
type Options struct {
	// BinSourceDir holds the binaries in the image.
	BinSourceDir string
	// BinDir is the node's CNI bin dir (/opt/cni/bin).
	BinDir string
	// Binaries are copied from BinSourceDir to BinDir. With IPAMOnly,
	// DefaultBinaries (not given as a flag) stand for IPAMOnlyBinaries.
	Binaries []string
	// MultusAlias is a second name under which kube-multus is installed
	// (multus-cni, the seed's "type"); empty = none. With IPAMOnly the
	// default is none, and any other value is an error.
	MultusAlias string

	// ConfigSource is the network config to install (a ConfigMap file).
	// With IPAMOnly it is the networks the controller reads (a file, or a
	// directory of them: the mounted ConfigMap), checked but never
	// installed, and only when given.
	ConfigSource string
	// ConfDir is the node's CNI conf dir (/etc/cni/net.d). IPAMOnly never
	// writes there (only into the directories of Kubeconfig and
	// EtcdCertDir).
	ConfDir string
	// ConfigName is the file name in ConfDir; empty = ConfigSource's.
	ConfigName string

	// ClusterNetwork is where delegates[0] of the installed config comes
	// from: ClusterNetworkConfig, ClusterNetworkAuto, or the file name of
	// the cluster network's config in ConfDir.
	ClusterNetwork string
	// IPAMOnly installs kube-ipam and kube-tier, the kubeconfig and the
	// etcd files, and no network config: for a cluster whose multus runs
	// kube-ipam from NetworkAttachmentDefinitions.
	IPAMOnly bool

	// Kubeconfig is where the plugins' kubeconfig is written; empty = not
	// written.
	Kubeconfig string
	// TokenFile and CAFile are the pod's service-account token and CA.
	TokenFile, CAFile string
	// KubeServer is the API server URL written into the kubeconfig; empty
	// = from KUBERNETES_SERVICE_HOST/PORT.
	KubeServer string

	// EtcdCertSource holds ca.crt, tls.crt and tls.key (a mounted Secret);
	// empty = no etcd TLS files are installed.
	EtcdCertSource string
	// EtcdCertDir is where they are written on the node.
	EtcdCertDir string

	// HostRoot is where the node's root filesystem would be mounted: a
	// path /X named by the config is checked at HostRoot/X when that lies
	// inside BinDir or ConfDir (the directories the installer sees).
	HostRoot string

	// Interval is the period of the re-install loop.
	Interval time.Duration
	// RetryInterval is the period of the loop while the node is not ready
	// for the config (a *WaitError: no cluster network config yet, or a
	// file that is not ours where ours goes).
	RetryInterval time.Duration
	// Once installs once and exits.
	Once bool

	Log *slog.Logger

	// given are the flags set on the command line (FlagSet), to tell a
	// default from a value asked for.
	given map[string]bool
}

// Defaults are the paths of deploy/daemonset.yaml.
func Defaults() Options {
	return Options{
		BinSourceDir:   "/kube-ipam/bin",
		BinDir:         "/host/opt/cni/bin",
		Binaries:       slices.Clone(DefaultBinaries),
		MultusAlias:    "multus-cni",
		ConfigSource:   "/etc/kube-ipam/config/00-multus.conf",
		ConfDir:        "/host/etc/cni/net.d",
		Kubeconfig:     "/host/etc/cni/net.d/kube-ipam.d/kubeconfig",
		TokenFile:      DefaultTokenFile,
		CAFile:         DefaultCAFile,
		EtcdCertSource: "/etc/kube-ipam/etcd",
		EtcdCertDir:    "/host/etc/cni/net.d/kube-ipam.d/etcd",
		HostRoot:       "/host",
		ClusterNetwork: ClusterNetworkConfig,
		Interval:       time.Minute,
		RetryInterval:  2 * time.Second,
	}
}

// FlagSet binds o's fields to flags (defaults: o's current values).
func FlagSet(o *Options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("kube-ipam-install", pflag.ContinueOnError)
	fs.StringVar(&o.BinSourceDir, "bin-source-dir", o.BinSourceDir, "directory of the binaries in the image")
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "the node's CNI bin dir, as mounted in this pod")
	fs.StringSliceVar(&o.Binaries, "binaries", o.Binaries, "binaries copied from --bin-source-dir to --bin-dir (with --ipam-only the default is "+strings.Join(IPAMOnlyBinaries, ",")+")")
	fs.StringVar(&o.MultusAlias, "multus-alias", o.MultusAlias, "also install kube-multus under this name (the seed's \"type\": \"multus-cni\"); empty = none (with --ipam-only: none, and nothing else is allowed)")
	fs.StringVar(&o.ConfigSource, "config", o.ConfigSource, "network config to install (mounted ConfigMap file); it is validated first and never installed when invalid. With --ipam-only, when given: the networks the controller reads (a file or a directory of them), checked but never installed")
	fs.StringVar(&o.ClusterNetwork, "cluster-network", o.ClusterNetwork, "where delegates[0] (the cluster network, eth0) of the installed config comes from: \"config\" (--config's own delegates[0]), \"auto\" (the first CNI config file of --conf-dir, followed as it changes), or that file's name (e.g. 10-calico.conflist: waits for exactly that file)")
	fs.BoolVar(&o.IPAMOnly, "ipam-only", o.IPAMOnly, "install only kube-ipam and kube-tier, the kubeconfig and the etcd files, and no network config: for a cluster that already runs multus (its 00-multus.conf and every other file of the conf dir are left alone)")
	fs.StringVar(&o.ConfDir, "conf-dir", o.ConfDir, "the node's CNI conf dir, as mounted in this pod")
	fs.StringVar(&o.ConfigName, "config-name", o.ConfigName, "file name of the config in --conf-dir (default: the base name of --config)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "where to write the plugins' kubeconfig (mode 0600); empty = do not write one")
	fs.StringVar(&o.TokenFile, "token-file", o.TokenFile, "service-account token put into the kubeconfig (re-read every --interval: kubelet rotates it)")
	fs.StringVar(&o.CAFile, "ca-file", o.CAFile, "service-account CA bundle put into the kubeconfig")
	fs.StringVar(&o.KubeServer, "kube-server", o.KubeServer, "API server URL for the kubeconfig (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&o.EtcdCertSource, "etcd-cert-source", o.EtcdCertSource, "directory with ca.crt, tls.crt, tls.key (mounted Secret); empty = install no etcd TLS files")
	fs.StringVar(&o.EtcdCertDir, "etcd-cert-dir", o.EtcdCertDir, "where to write the etcd TLS files on the node (tls.key mode 0600)")
	fs.StringVar(&o.HostRoot, "host-root", o.HostRoot, "prefix mapping the node's paths named in the config to this pod's mounts, to check that they exist; empty = no check")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "period of the re-install loop (config, token and Secret changes are picked up within it)")
	fs.DurationVar(&o.RetryInterval, "retry-interval", o.RetryInterval, "period of the loop while the node is not ready for the config (--cluster-network=auto: no cluster network config yet, or a file that is not ours in the way)")
	fs.BoolVar(&o.Once, "once", o.Once, "install once and exit instead of staying running")
	// Record which of these the command line sets: with --ipam-only a
	// default means "the mode's", a given one is checked against the mode.
	o.given = map[string]bool{}
	for _, name := range []string{"binaries", "multus-alias", "config"} {
		f := fs.Lookup(name)
		f.Value = givenValue{f.Value, name, o.given}
	}
	return fs
}

// givenValue records that a flag was set.
type givenValue struct {
	pflag.Value
	name  string
	given map[string]bool
}

func (v givenValue) Set(s string) error {
	v.given[v.name] = true
	return v.Value.Set(s)
}

// isSet reports whether a setting was asked for: given as a flag, or (for
// Options built in code) not its default.
func (o *Options) isSet(flag string, isDefault bool) bool { return o.given[flag] || !isDefault }

// binaries are the image's binaries the mode installs.
func (o *Options) binaries() []string {
	if o.IPAMOnly && !o.isSet("binaries", slices.Equal(o.Binaries, DefaultBinaries)) {
		return IPAMOnlyBinaries
	}
	return o.Binaries
}

// multusAlias is the extra name of kube-multus, "" for none.
func (o *Options) multusAlias() string {
	if o.IPAMOnly && !o.isSet("multus-alias", o.MultusAlias == Defaults().MultusAlias) {
		return ""
	}
	return o.MultusAlias
}

// networksSource is the networks file an IPAM-only install checks, "" for
// none.
func (o *Options) networksSource() string {
	if o.IPAMOnly && o.isSet("config", o.ConfigSource == Defaults().ConfigSource) {
		return o.ConfigSource
	}
	return ""
}

// InstalledBinaries are the names the mode writes into BinDir (the
// kube-multus alias included).
func (o *Options) InstalledBinaries() []string {
	out := slices.Clone(o.binaries())
	if a := o.multusAlias(); a != "" && slices.Contains(out, "kube-multus") {
		out = append(out, a)
	}
	return out
}

// auto reports whether delegates[0] comes from the node's conf dir.
func (o *Options) auto() bool {
	return !o.IPAMOnly && o.ClusterNetwork != ClusterNetworkConfig
}

// pinnedClusterNetwork is the file --cluster-network names, "" for auto.
func (o *Options) pinnedClusterNetwork() string {
	if o.ClusterNetwork == ClusterNetworkAuto || o.ClusterNetwork == ClusterNetworkConfig {
		return ""
	}
	return o.ClusterNetwork
}

// Validate checks the option combination.
func (o *Options) Validate() error {
	var errs []error
	need := func(flag, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("--%s is required", flag))
		}
	}
	need("bin-source-dir", o.BinSourceDir)
	need("bin-dir", o.BinDir)
	if !o.IPAMOnly {
		need("config", o.ConfigSource)
		need("conf-dir", o.ConfDir)
	}
	if o.Kubeconfig != "" {
		need("token-file", o.TokenFile)
		need("ca-file", o.CAFile)
	}
	if o.EtcdCertSource != "" {
		need("etcd-cert-dir", o.EtcdCertDir)
	}
	bins := o.binaries()
	for _, b := range append(slices.Clone(bins), o.MultusAlias) {
		if strings.ContainsRune(b, '/') || b == "." || b == ".." {
			errs = append(errs, fmt.Errorf("binary name %q must be a plain file name", b))
		}
	}
	if o.IPAMOnly {
		// Another multus owns the node's meta plugin: never install one,
		// nor anything under a multus binary's name.
		if slices.Contains(bins, "kube-multus") {
			errs = append(errs, errors.New("--ipam-only installs no kube-multus: drop it from --binaries (the default there is "+strings.Join(IPAMOnlyBinaries, ",")+")"))
		}
		if a := o.multusAlias(); a != "" {
			errs = append(errs, fmt.Errorf("--multus-alias=%s with --ipam-only: it would install kube-multus as %s, over the cluster's multus; leave it out (or empty)", a, a))
		}
		if o.ClusterNetwork != ClusterNetworkConfig {
			errs = append(errs, fmt.Errorf("--cluster-network=%s with --ipam-only: an IPAM-only install writes no meta plugin config for a cluster network to go into; use one or the other", o.ClusterNetwork))
		}
	} else if o.MultusAlias != "" && !slices.Contains(bins, "kube-multus") {
		errs = append(errs, errors.New("--multus-alias needs kube-multus in --binaries"))
	}
	if n := o.configName(); strings.ContainsRune(n, '/') {
		errs = append(errs, fmt.Errorf("--config-name %q must be a plain file name", n))
	}
	switch cn := o.ClusterNetwork; {
	case cn == ClusterNetworkConfig, cn == ClusterNetworkAuto:
	case !strings.ContainsRune(cn, '/') && slices.Contains(ConfigExtensions, filepath.Ext(cn)) && cn != filepath.Ext(cn):
		if cn == o.configName() {
			errs = append(errs, fmt.Errorf("--cluster-network=%s names the file this installer writes (--config-name): name the cluster network's own config", cn))
		}
	default:
		errs = append(errs, fmt.Errorf("--cluster-network=%q: want %q (delegates[0] of --config), %q (the first CNI config file of --conf-dir) or the plain file name of the cluster network's config in --conf-dir (%s)",
			cn, ClusterNetworkConfig, ClusterNetworkAuto, strings.Join(ConfigExtensions, ", ")))
	}
	if !o.Once && o.Interval <= 0 {
		errs = append(errs, errors.New("--interval must be positive"))
	}
	if !o.Once && o.auto() && o.RetryInterval <= 0 {
		errs = append(errs, errors.New("--retry-interval must be positive"))
	}
	return errors.Join(errs...)
}

func (o *Options) configName() string {
	if o.ConfigName != "" {
		return o.ConfigName
	}
	return filepath.Base(o.ConfigSource)
}

// Etcd TLS file names, in the Secret and on the node (kubernetes.io/tls
// Secret keys, plus ca.crt).
const (
	EtcdCAFile   = "ca.crt"
	EtcdCertFile = "tls.crt"
	EtcdKeyFile  = "tls.key"
)

// memFile is a small file's content and mode.
type memFile struct {
	name string
	data []byte
	mode fs.FileMode
}

// Installer runs install passes. It remembers file hashes between passes.
type Installer struct {
	o Options
	h *hasher
}

// New returns an installer for o (o.Validate must pass).
func New(o Options) (*Installer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Kubeconfig != "" && o.KubeServer == "" {
		s, err := ServerFromEnv(os.Getenv)
		if err != nil {
			return nil, err
		}
		o.KubeServer = s
	}
	return &Installer{o: o, h: newHasher()}, nil
}

// Result is what one pass did.
type Result struct {
	// Changed are the files written (or re-moded), in order.
	Changed []string
	// Warnings are worth an operator's attention but did not stop the pass.
	Warnings []string
	// ClusterNetwork is, in auto mode, the file delegates[0] came from.
	ClusterNetwork string
}

// configPlan is the config a pass installs.
type configPlan struct {
	// name is the file name in ConfDir, "" when nothing is written
	// (IPAM-only).
	name string
	data []byte
	// checked is the validated config, nil when there is none to check.
	checked *CheckedConfig
	// what names the config in errors; refuse starts the error of a
	// config that names missing files.
	what, refuse string
	// cluster is auto mode's cluster network file.
	cluster string
}

// planConfig reads and validates the config of the installer's mode.
func (in *Installer) planConfig(res *Result) (*configPlan, error) {
	o := &in.o
	if o.IPAMOnly {
		src := o.networksSource()
		if src == "" {
			return &configPlan{}, nil
		}
		checked, err := CheckNetworksAt(src)
		if err != nil {
			return nil, fmt.Errorf("networks file %s (read by the controller): %w", src, err)
		}
		res.Warnings = append(res.Warnings, checked.Warnings...)
		what := fmt.Sprintf("networks file %s (read by the controller)", src)
		return &configPlan{checked: checked, what: what, refuse: what}, nil
	}
	name := o.configName()
	data, err := os.ReadFile(o.ConfigSource)
	if err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	plan := &configPlan{name: name, data: data, what: "network config " + o.ConfigSource}
	if o.auto() {
		dst := filepath.Join(o.ConfDir, name)
		ours, err := Ours(dst, recordPath(o.ConfDir, name))
		if err != nil {
			return nil, err
		}
		if !ours {
			return nil, waitf(slog.LevelError, "%s was not written by kube-ipam-install (it has no %q key and is not the file the installer last wrote there): leaving it, and the node, alone. If it is a hand-written config that the generated one should replace, move it out of %s; the installer writes its config within --retry-interval after",
				dst, MarkerKey, o.ConfDir)
		}
		cluster, skipped, err := FindClusterNetwork(o.ConfDir, name, o.pinnedClusterNetwork())
		for _, n := range skipped {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s was generated by kube-ipam-install (it has %q) but is not %s: not a cluster network; remove it (left over from another --config-name?)", filepath.Join(o.ConfDir, n), MarkerKey, name))
		}
		if err != nil {
			return nil, err
		}
		if plan.data, err = BuildAutoConfig(data, cluster); err != nil {
			return nil, fmt.Errorf("refusing to install network config %s with --cluster-network=%s: %w", o.ConfigSource, o.ClusterNetwork, err)
		}
		plan.cluster = cluster.Name
		plan.what = fmt.Sprintf("network config %s with the cluster network of %s", o.ConfigSource, filepath.Join(o.ConfDir, cluster.Name))
		res.ClusterNetwork = cluster.Name
	}
	plan.refuse = "refusing to install " + plan.what
	if plan.checked, err = CheckConfig(plan.data, name); err != nil {
		return nil, fmt.Errorf("%s: %w", plan.refuse, err)
	}
	res.Warnings = append(res.Warnings, plan.checked.Warnings...)
	return plan, nil
}

// Pass installs everything once. Everything is read and validated before
// anything is written, so an invalid config, Secret or token leaves the node
// untouched. The config is written last, once the binaries and files it
// names are in place: the runtime may use it the moment it appears.
func (in *Installer) Pass() (*Result, error) {
	o := &in.o
	res := &Result{}

	// 1. Read and validate.
	plan, err := in.planConfig(res)
	if err != nil {
		return res, err
	}
	type srcBin struct {
		name, src string
		sum       [sha256.Size]byte
	}
	var bins []srcBin
	alias := o.multusAlias()
	for _, b := range o.binaries() {
		src := filepath.Join(o.BinSourceDir, b)
		sum, fi, ok, err := in.h.sum(src)
		if err == nil && !ok {
			err = fs.ErrNotExist
		}
		if err != nil {
			return nil, fmt.Errorf("binary %s: %w (the image must hold every binary of --binaries: %s)", src, err, strings.Join(o.binaries(), ", "))
		}
		if fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("binary %s is not executable (mode %v)", src, fi.Mode().Perm())
		}
		bins = append(bins, srcBin{b, src, sum})
		if b == "kube-multus" && alias != "" {
			bins = append(bins, srcBin{alias, src, sum})
		}
	}
	var etcdFiles []memFile
	if o.EtcdCertSource != "" {
		ca, cert, key, err := readEtcdTLS(o.EtcdCertSource)
		if err != nil {
			return nil, err
		}
		etcdFiles = []memFile{{EtcdCAFile, ca, 0o644}, {EtcdCertFile, cert, 0o644}, {EtcdKeyFile, key, 0o600}}
	}
	var kubeconfig []byte
	if o.Kubeconfig != "" {
		if kubeconfig, err = readKubeconfig(o.KubeServer, o.TokenFile, o.CAFile); err != nil {
			return nil, err
		}
	}

	// 2. Binaries, TLS files, kubeconfig.
	changed := func(p string, ch bool, err error) error {
		if err != nil {
			return err
		}
		if ch {
			res.Changed = append(res.Changed, p)
		}
		return nil
	}
	if err := mkdir(o.BinDir, 0o755); err != nil {
		return res, err
	}
	var binNames []string
	for _, b := range bins {
		binNames = append(binNames, b.name)
	}
	if err := in.cleanTemps(o.BinDir, binNames); err != nil {
		return res, err
	}
	for _, b := range bins {
		dst := filepath.Join(o.BinDir, b.name)
		ch, err := in.h.syncFile(dst, b.sum, 0o755, func() (io.ReadCloser, error) { return os.Open(b.src) })
		if err := changed(dst, ch, err); err != nil {
			return res, fmt.Errorf("installing %s: %w", dst, err)
		}
	}
	if len(etcdFiles) > 0 {
		if err := mkdir(o.EtcdCertDir, 0o700); err != nil {
			return res, err
		}
		if err := in.cleanTemps(o.EtcdCertDir, []string{EtcdCAFile, EtcdCertFile, EtcdKeyFile}); err != nil {
			return res, err
		}
		for _, f := range etcdFiles {
			dst := filepath.Join(o.EtcdCertDir, f.name)
			ch, err := in.h.syncBytes(dst, f.data, f.mode)
			if err := changed(dst, ch, err); err != nil {
				return res, fmt.Errorf("installing %s: %w", dst, err)
			}
		}
	}
	if kubeconfig != nil {
		dir := filepath.Dir(o.Kubeconfig)
		if err := mkdir(dir, 0o700); err != nil {
			return res, err
		}
		if err := in.cleanTemps(dir, []string{filepath.Base(o.Kubeconfig)}); err != nil {
			return res, err
		}
		ch, err := in.h.syncBytes(o.Kubeconfig, kubeconfig, 0o600)
		if err := changed(o.Kubeconfig, ch, err); err != nil {
			return res, fmt.Errorf("installing %s: %w", o.Kubeconfig, err)
		}
	}

	// 3. The files the config names must now exist, where we can see them.
	if plan.checked != nil {
		if err := in.checkReferenced(plan.checked, res); err != nil {
			return res, fmt.Errorf("%s: %w", plan.refuse, err)
		}
	}
	if plan.name == "" {
		return res, nil // IPAM-only: no config, and nothing else in ConfDir
	}

	// 4. The config, last, then the record that makes it ours.
	name := plan.name
	if err := mkdir(o.ConfDir, 0o755); err != nil {
		return res, err
	}
	if err := in.cleanTemps(o.ConfDir, []string{name}); err != nil {
		return res, err
	}
	dst := filepath.Join(o.ConfDir, name)
	ch, err := in.h.syncBytes(dst, plan.data, 0o644)
	if err := changed(dst, ch, err); err != nil {
		return res, fmt.Errorf("installing %s: %w", dst, err)
	}
	rec := recordPath(o.ConfDir, name)
	if err := mkdir(filepath.Dir(rec), 0o700); err != nil {
		return res, err
	}
	if err := in.cleanTemps(filepath.Dir(rec), []string{filepath.Base(rec)}); err != nil {
		return res, err
	}
	ch, err = in.h.syncBytes(rec, recordOf(plan.data), 0o644)
	if err := changed(rec, ch, err); err != nil {
		return res, fmt.Errorf("recording %s: %w", dst, err)
	}
	if first, err := FirstConfig(o.ConfDir); err == nil && first != name {
		res.Warnings = append(res.Warnings, fmt.Sprintf(
			"%s sorts before %s in %s: the container runtime uses the first config file, so pods do not get kube-multus (rename one of them)", first, name, o.ConfDir))
	}
	return res, nil
}

func (in *Installer) cleanTemps(dir string, names []string) error {
	removed, err := removeStaleTemps(dir, names)
	for _, p := range removed {
		in.o.Log.Info("removed a temporary file left by an interrupted install", "file", p)
	}
	return err
}

// checkReferenced makes sure every file the config names and that lies in a
// directory this installer manages exists. Files elsewhere on the node are
// not visible here and are only listed at debug level.
func (in *Installer) checkReferenced(c *CheckedConfig, res *Result) error {
	o := &in.o
	if o.HostRoot == "" {
		return nil
	}
	// The directories mounted into this pod: an IPAM-only install may see
	// no more of the conf dir than its own files' directories.
	visible := []string{o.BinDir}
	if !o.IPAMOnly {
		visible = append(visible, o.ConfDir)
	}
	if o.Kubeconfig != "" {
		visible = append(visible, filepath.Dir(o.Kubeconfig))
	}
	if o.EtcdCertSource != "" {
		visible = append(visible, o.EtcdCertDir)
	}
	var missing []string
	for _, f := range c.Files {
		if !filepath.IsAbs(f.Path) {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s %q is a relative path: the plugins resolve it against the runtime's working directory", f.Key, f.Path))
			continue
		}
		local := filepath.Join(o.HostRoot, f.Path)
		if !slices.ContainsFunc(visible, func(dir string) bool { return within(local, dir) }) {
			o.Log.Debug("not checking a file outside the mounted directories", "key", f.Key, "path", f.Path)
			continue
		}
		if _, err := os.Stat(local); err != nil {
			missing = append(missing, fmt.Sprintf("%s %s (%s here): %v", f.Key, f.Path, local, errors.Unwrap(err)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("it names files that do not exist on the node: %s (check the paths against --kubeconfig and --etcd-cert-dir)", strings.Join(missing, "; "))
	}
	return nil
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// readEtcdTLS reads and checks the etcd client certificate, key and CA.
func readEtcdTLS(dir string) (ca, cert, key []byte, err error) {
	read := func(name string) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			err = fmt.Errorf("etcd TLS files: %w (the Secret needs the keys %s, %s and %s)", err, EtcdCAFile, EtcdCertFile, EtcdKeyFile)
		}
		return b
	}
	ca, cert, key = read(EtcdCAFile), read(EtcdCertFile), read(EtcdKeyFile)
	if err != nil {
		return nil, nil, nil, err
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return nil, nil, nil, fmt.Errorf("etcd TLS files in %s: %s and %s are not a matching certificate and key: %v", dir, EtcdCertFile, EtcdKeyFile, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return nil, nil, nil, fmt.Errorf("etcd TLS files in %s: %s holds no PEM certificate", dir, EtcdCAFile)
	}
	return ca, cert, key, nil
}

// FirstConfig returns the name of the config file a container runtime uses
// in dir: the first *.conf, *.conflist or *.json in lexical order.
func FirstConfig(dir string) (string, error) {
	names, err := configFiles(dir)
	if err != nil {
		return "", err
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no config file in %s", dir)
	}
	return names[0], nil
}

// Run installs once, then (unless Once) again every Interval until ctx
// ends, and returns nil then: nothing is removed on the way out. A failed
// pass returns its error, and the installer exits non-zero, leaving the
// node with what the last good pass installed. A pass that waits (a
// *WaitError: auto mode without a cluster network config yet, or with a
// file that is not ours in the way) is logged and tried again every
// RetryInterval; with Once it is the error.
func Run(ctx context.Context, o Options) error {
	in, err := New(o)
	if err != nil {
		return err
	}
	log := in.o.Log
	retry := in.o.RetryInterval
	if retry <= 0 {
		retry = in.o.Interval
	}
	var (
		setUp      bool
		cluster    string
		lastWait   string
		lastWaitAt time.Time
	)
	// pass runs one pass and says when the next is due.
	pass := func() (time.Duration, error) {
		res, err := in.Pass()
		if res != nil {
			for _, p := range res.Changed {
				log.Info("installed", "file", p)
			}
			for _, w := range res.Warnings {
				log.Warn(w)
			}
			if res.ClusterNetwork != "" && res.ClusterNetwork != cluster {
				log.Info("cluster network config (delegates[0])", "file", filepath.Join(in.o.ConfDir, res.ClusterNetwork))
				cluster = res.ClusterNetwork
			}
		}
		var w *WaitError
		if errors.As(err, &w) && !in.o.Once {
			// Every RetryInterval, but logged once per Interval unless
			// the reason changes.
			if w.Msg != lastWait || time.Since(lastWaitAt) >= in.o.Interval {
				log.Log(ctx, w.Level, w.Msg)
				lastWait, lastWaitAt = w.Msg, time.Now()
			}
			return retry, nil
		}
		if err != nil {
			return 0, err
		}
		lastWait = ""
		if !setUp {
			setUp = true
			if in.o.IPAMOnly {
				log.Info("node is set up (IPAM only: no network config written)", "binDir", in.o.BinDir, "binaries", in.o.InstalledBinaries())
			} else {
				log.Info("node is set up", "config", filepath.Join(in.o.ConfDir, in.o.configName()), "binDir", in.o.BinDir)
			}
		}
		return in.o.Interval, nil
	}
	next, err := pass()
	if err != nil {
		return err
	}
	if in.o.Once {
		return nil
	}
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping; the node keeps the installed plugins and config")
			return nil
		case <-t.C:
			next, err := pass()
			if err != nil {
				return err
			}
			t.Reset(next)
		}
	}
}
