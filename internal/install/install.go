// Package install is kube-ipam-install, the node installer that a DaemonSet
// runs on every node (as multus's and whereabouts's installers do): it puts
// the plugin binaries into the node's CNI bin dir, writes the plugins'
// kubeconfig and etcd TLS files, and installs the network config from a
// ConfigMap, after validating it with the plugins' own parsers, so that a
// bad ConfigMap never reaches a node's /etc/cni/net.d.
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
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Options are the installer's flags. Paths under /host are the node's
// directories as mounted into the installer pod (hostPath volumes).
type Options struct {
	// BinSourceDir holds the binaries in the image.
	BinSourceDir string
	// BinDir is the node's CNI bin dir (/opt/cni/bin).
	BinDir string
	// Binaries are copied from BinSourceDir to BinDir.
	Binaries []string
	// MultusAlias is a second name under which kube-multus is installed
	// (multus-cni, the seed's "type"); empty = none.
	MultusAlias string

	// ConfigSource is the network config to install (a ConfigMap file).
	ConfigSource string
	// ConfDir is the node's CNI conf dir (/etc/cni/net.d).
	ConfDir string
	// ConfigName is the file name in ConfDir; empty = ConfigSource's.
	ConfigName string

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
	// Once installs once and exits.
	Once bool

	Log *slog.Logger
}

// Defaults are the paths of deploy/daemonset.yaml.
func Defaults() Options {
	return Options{
		BinSourceDir:   "/kube-ipam/bin",
		BinDir:         "/host/opt/cni/bin",
		Binaries:       []string{"kube-ipam", "kube-multus"},
		MultusAlias:    "multus-cni",
		ConfigSource:   "/etc/kube-ipam/config/00-multus.conf",
		ConfDir:        "/host/etc/cni/net.d",
		Kubeconfig:     "/host/etc/cni/net.d/kube-ipam.d/kubeconfig",
		TokenFile:      DefaultTokenFile,
		CAFile:         DefaultCAFile,
		EtcdCertSource: "/etc/kube-ipam/etcd",
		EtcdCertDir:    "/host/etc/cni/net.d/kube-ipam.d/etcd",
		HostRoot:       "/host",
		Interval:       time.Minute,
	}
}

// FlagSet binds o's fields to flags (defaults: o's current values).
func FlagSet(o *Options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("kube-ipam-install", pflag.ContinueOnError)
	fs.StringVar(&o.BinSourceDir, "bin-source-dir", o.BinSourceDir, "directory of the binaries in the image")
	fs.StringVar(&o.BinDir, "bin-dir", o.BinDir, "the node's CNI bin dir, as mounted in this pod")
	fs.StringSliceVar(&o.Binaries, "binaries", o.Binaries, "binaries copied from --bin-source-dir to --bin-dir")
	fs.StringVar(&o.MultusAlias, "multus-alias", o.MultusAlias, "also install kube-multus under this name (the seed's \"type\": \"multus-cni\"); empty = none")
	fs.StringVar(&o.ConfigSource, "config", o.ConfigSource, "network config to install (mounted ConfigMap file); it is validated first and never installed when invalid")
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
	fs.BoolVar(&o.Once, "once", o.Once, "install once and exit instead of staying running")
	return fs
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
	need("config", o.ConfigSource)
	need("conf-dir", o.ConfDir)
	if o.Kubeconfig != "" {
		need("token-file", o.TokenFile)
		need("ca-file", o.CAFile)
	}
	if o.EtcdCertSource != "" {
		need("etcd-cert-dir", o.EtcdCertDir)
	}
	for _, b := range append(slices.Clone(o.Binaries), o.MultusAlias) {
		if strings.ContainsRune(b, '/') || b == "." || b == ".." {
			errs = append(errs, fmt.Errorf("binary name %q must be a plain file name", b))
		}
	}
	if o.MultusAlias != "" && !slices.Contains(o.Binaries, "kube-multus") {
		errs = append(errs, errors.New("--multus-alias needs kube-multus in --binaries"))
	}
	if n := o.configName(); strings.ContainsRune(n, '/') {
		errs = append(errs, fmt.Errorf("--config-name %q must be a plain file name", n))
	}
	if !o.Once && o.Interval <= 0 {
		errs = append(errs, errors.New("--interval must be positive"))
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
}

// Pass installs everything once. Everything is read and validated before
// anything is written, so an invalid config, Secret or token leaves the node
// untouched. The config is written last, once the binaries and files it
// names are in place: the runtime may use it the moment it appears.
func (in *Installer) Pass() (*Result, error) {
	o := &in.o
	res := &Result{}

	// 1. Read and validate.
	name := o.configName()
	confData, err := os.ReadFile(o.ConfigSource)
	if err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	checked, err := CheckConfig(confData, name)
	if err != nil {
		return nil, fmt.Errorf("refusing to install network config %s: %w", o.ConfigSource, err)
	}
	res.Warnings = append(res.Warnings, checked.Warnings...)
	type srcBin struct {
		name, src string
		sum       [sha256.Size]byte
	}
	var bins []srcBin
	for _, b := range o.Binaries {
		src := filepath.Join(o.BinSourceDir, b)
		sum, fi, ok, err := in.h.sum(src)
		if err == nil && !ok {
			err = fs.ErrNotExist
		}
		if err != nil {
			return nil, fmt.Errorf("binary %s: %w", src, err)
		}
		if fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("binary %s is not executable (mode %v)", src, fi.Mode().Perm())
		}
		bins = append(bins, srcBin{b, src, sum})
		if b == "kube-multus" && o.MultusAlias != "" {
			bins = append(bins, srcBin{o.MultusAlias, src, sum})
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
	if err := in.checkReferenced(checked, res); err != nil {
		return res, fmt.Errorf("refusing to install network config %s: %w", o.ConfigSource, err)
	}

	// 4. The config, last.
	if err := mkdir(o.ConfDir, 0o755); err != nil {
		return res, err
	}
	if err := in.cleanTemps(o.ConfDir, []string{name}); err != nil {
		return res, err
	}
	dst := filepath.Join(o.ConfDir, name)
	ch, err := in.h.syncBytes(dst, confData, 0o644)
	if err := changed(dst, ch, err); err != nil {
		return res, fmt.Errorf("installing %s: %w", dst, err)
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
	var missing []string
	for _, f := range c.Files {
		if !filepath.IsAbs(f.Path) {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s %q is a relative path: the plugins resolve it against the runtime's working directory", f.Key, f.Path))
			continue
		}
		local := filepath.Join(o.HostRoot, f.Path)
		if !within(local, o.ConfDir) && !within(local, o.BinDir) {
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
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if slices.Contains(ConfigExtensions, filepath.Ext(e.Name())) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no config file in %s", dir)
	}
	sort.Strings(names)
	return names[0], nil
}

// Run installs once, then (unless Once) again every Interval until ctx
// ends, and returns nil then: nothing is removed on the way out. A failed
// pass returns its error, and the installer exits non-zero, leaving the
// node with what the last good pass installed.
func Run(ctx context.Context, o Options) error {
	in, err := New(o)
	if err != nil {
		return err
	}
	log := in.o.Log
	pass := func() error {
		res, err := in.Pass()
		if res != nil {
			for _, p := range res.Changed {
				log.Info("installed", "file", p)
			}
			for _, w := range res.Warnings {
				log.Warn(w)
			}
		}
		return err
	}
	if err := pass(); err != nil {
		return err
	}
	log.Info("node is set up", "config", filepath.Join(in.o.ConfDir, in.o.configName()), "binDir", in.o.BinDir)
	if in.o.Once {
		return nil
	}
	t := time.NewTicker(in.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping; the node keeps the installed plugins and config")
			return nil
		case <-t.C:
			if err := pass(); err != nil {
				return err
			}
		}
	}
}
