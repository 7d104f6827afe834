package controller

// deploy/monitoring (alert rules, Grafana dashboard, ServiceMonitor) checked
// against what a real kube-ipam-controller exports: the rules are parsed
// with Prometheus's own rulefmt and PromQL parser, and every metric and
// label an expression uses must be in a real scrape after an allocation and
// a GC pass.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kubeipam/internal/testenv"
)

const (
	rulesFile      = "kube-ipam.rules.yml"
	ruleManifest   = "prometheusrule.yaml"
	monitorFile    = "servicemonitor.yaml"
	dashboardFile  = "kube-ipam-dashboard.json"
	metricsService = "kube-ipam-controller-metrics" // deploy/controller.yaml
	// The prometheus-operator names a ServiceMonitor's job after the
	// Service; the rules and the dashboard select up{job=...} by it.
	metricsJob = metricsService
)

// targetLabels are added by Prometheus to every scraped series, and
// promSeries are series Prometheus makes itself for every target: neither
// is in /metrics.
var (
	targetLabels = map[string]bool{"job": true, "instance": true}
	promSeries   = map[string]bool{"up": true}
)

func monitoringPath(t *testing.T, name string) string {
	return filepath.Join(testenv.ModuleRoot(t), "deploy", "monitoring", name)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return b
}

// query is one PromQL expression of the monitoring files, and where it is.
type query struct{ where, expr string }

var promql = parser.NewParser(parser.Options{})

// parseRules parses a rules file as Prometheus loads it: unknown fields
// refused, every expression and template parsed.
func parseRules(t *testing.T, name string, b []byte) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.Parse(b, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("%s: %v", name, errors.Join(errs...))
	}
	return groups
}

func ruleQueries(groups *rulefmt.RuleGroups) []query {
	var out []query
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			out = append(out, query{rulesFile + ": alert " + r.Alert + r.Record, r.Expr})
		}
	}
	return out
}

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name, Type string
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasource struct{ Type, UID string }

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(readFile(t, monitoringPath(t, dashboardFile))))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

func (d dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

var (
	grafanaIntervals = regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)
	grafanaVariable  = regexp.MustCompile(`\$\{?\w+\}?`)
	labelValues      = regexp.MustCompile(`^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$`)
)

// promqlOf turns a Grafana query into PromQL: the interval variables
// become a duration, every other variable (used inside label values) a
// word.
func promqlOf(expr string) string {
	return grafanaVariable.ReplaceAllString(grafanaIntervals.ReplaceAllString(expr, "5m"), "x")
}

// dashboardQueries lists every panel target and query variable.
func dashboardQueries(t *testing.T, d dashboard) []query {
	t.Helper()
	var out []query
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("%s: variable %s: query is neither a string nor an object: %s", dashboardFile, v.Name, v.Query)
			}
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("%s: variable %s: %q is not label_values(selector, label)", dashboardFile, v.Name, q.Query)
		}
		out = append(out, query{dashboardFile + ": variable " + v.Name, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
	}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, query{fmt.Sprintf("%s: panel %q target %s", dashboardFile, p.Title, tg.RefID), promqlOf(tg.Expr)})
		}
	}
	return out
}

// uses is what one expression needs from the scrape.
type uses struct {
	metrics []string
	// labels per metric: label names its selector matches on.
	matched map[string][]string
	// grouped: label names of by/without and on/ignoring clauses.
	grouped []string
}

func inspect(q query) (uses, error) {
	e, err := promql.ParseExpr(q.expr)
	if err != nil {
		return uses{}, fmt.Errorf("%s: %w", q.where, err)
	}
	u := uses{matched: map[string][]string{}}
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			name := n.Name
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				bad = fmt.Errorf("%s: selector %s names no metric", q.where, n)
				return nil
			}
			u.metrics = append(u.metrics, name)
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName {
					u.matched[name] = append(u.matched[name], m.Name)
				}
			}
		case *parser.AggregateExpr:
			u.grouped = append(u.grouped, n.Grouping...)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				u.grouped = append(u.grouped, n.VectorMatching.MatchingLabels...)
			}
		}
		return nil
	})
	if bad != nil {
		return uses{}, bad
	}
	if len(u.metrics) == 0 {
		return uses{}, fmt.Errorf("%s: %q uses no metric", q.where, q.expr)
	}
	return u, nil
}

// allQueries parses both files and returns every query they hold.
func allQueries(t *testing.T) []query {
	t.Helper()
	groups := parseRules(t, rulesFile, readFile(t, monitoringPath(t, rulesFile)))
	return append(ruleQueries(groups), dashboardQueries(t, loadDashboard(t))...)
}

// headingAnchors are the GitHub anchors of a Markdown file's headings.
func headingAnchors(b []byte) map[string]bool {
	out := map[string]bool{}
	strip := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, l := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(strings.TrimLeft(l, "#"), " "); ok && strings.HasPrefix(l, "#") {
			out[strings.ReplaceAll(strip.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), ""), " ", "-")] = true
		}
	}
	return out
}

// TestMonitoringRules: the plain rules file loads in Prometheus's parser;
// every rule is an alert with a severity, a summary, a description and a
// runbook that is a heading of docs/operations.md; the PrometheusRule
// manifest holds exactly the same groups.
func TestMonitoringRules(t *testing.T) {
	plain := readFile(t, monitoringPath(t, rulesFile))
	groups := parseRules(t, rulesFile, plain)
	anchors := headingAnchors(readFile(t, filepath.Join(testenv.ModuleRoot(t), "docs", "operations.md")))
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" {
				t.Errorf("%s: group %s: recording rule %s: only alerts are expected here", rulesFile, g.Name, r.Record)
				continue
			}
			if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
				t.Errorf("%s: alert %s: severity %q, want critical, warning or info", rulesFile, r.Alert, s)
			}
			for _, k := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("%s: alert %s has no %s annotation", rulesFile, r.Alert, k)
				}
			}
			rb := r.Annotations["runbook"]
			if anchor, ok := strings.CutPrefix(rb, "docs/operations.md#"); !ok || !anchors[anchor] {
				t.Errorf("%s: alert %s: runbook %q is not a heading of docs/operations.md", rulesFile, r.Alert, rb)
			}
		}
	}
	if n == 0 {
		t.Fatalf("%s has no rule", rulesFile)
	}

	var m struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(readFile(t, monitoringPath(t, ruleManifest)), &m); err != nil {
		t.Fatalf("%s: %v", ruleManifest, err)
	}
	if m.APIVersion != "monitoring.coreos.com/v1" || m.Kind != "PrometheusRule" || m.Metadata.Name == "" || m.Metadata.Namespace != "kube-ipam" {
		t.Errorf("%s is %s %s %s/%s, want a monitoring.coreos.com/v1 PrometheusRule in namespace kube-ipam", ruleManifest, m.APIVersion, m.Kind, m.Metadata.Namespace, m.Metadata.Name)
	}
	// The spec must load as a rules file too, and equal the plain one.
	specYAML, err := yaml.JSONToYAML(m.Spec)
	must(t, err)
	parseRules(t, ruleManifest+" spec", specYAML)
	var a, b any
	must(t, yaml.Unmarshal(plain, &a))
	must(t, yaml.Unmarshal(specYAML, &b))
	if !reflect.DeepEqual(a, b) {
		t.Errorf("%s's spec differs from %s: change both", ruleManifest, rulesFile)
	}
}

// TestMonitoringDashboard: the dashboard is JSON Grafana imports without
// plugins, every panel has a query that parses as PromQL, the data source
// is the dashboard's variable, and the network variable filters queries.
func TestMonitoringDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: no title or uid", dashboardFile)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["network"] != "query" {
		t.Errorf("%s: variables %v, want datasource (datasource) and network (query)", dashboardFile, vars)
	}
	// Panel types that ship with Grafana: nothing to install.
	builtin := map[string]bool{"row": true, "timeseries": true, "stat": true, "gauge": true, "bargauge": true, "table": true, "text": true, "heatmap": true}
	ids := map[int]bool{}
	filtered := 0
	for _, p := range d.allPanels() {
		if !builtin[p.Type] {
			t.Errorf("%s: panel %q: type %q is not one of Grafana's own", dashboardFile, p.Title, p.Type)
		}
		if ids[p.ID] {
			t.Errorf("%s: panel id %d twice", dashboardFile, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("%s: panel %d %q has no title or no target", dashboardFile, p.ID, p.Title)
		}
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: panel %q: gridPos %+v outside the 24-column grid", dashboardFile, p.Title, p.GridPos)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: panel %q target %s has no expr", dashboardFile, p.Title, tg.RefID)
			}
			if strings.Contains(tg.Expr, `$network`) {
				filtered++
			}
			for _, ds := range []*datasource{p.Datasource, tg.Datasource} {
				if ds == nil || ds.UID != "${datasource}" {
					t.Errorf("%s: panel %q target %s: data source %+v, want uid ${datasource}", dashboardFile, p.Title, tg.RefID, ds)
				}
			}
		}
	}
	if filtered == 0 {
		t.Errorf("%s: no query uses $network", dashboardFile)
	}
	for _, q := range dashboardQueries(t, d) {
		if _, err := inspect(q); err != nil {
			t.Error(err)
		}
	}
}

// manifestDocs splits a multi-document YAML file into its documents.
func manifestDocs(t *testing.T, name string, b []byte) []map[string]any {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []map[string]any
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		must(t, err)
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(m) > 0 {
			out = append(out, m)
		}
	}
}

func str(m map[string]any, path ...string) string {
	var v any = m
	for _, p := range path {
		mm, _ := v.(map[string]any)
		v = mm[p]
	}
	s, _ := v.(string)
	return s
}

// TestMonitoringServiceMonitor: the ServiceMonitor selects the metrics
// Service of deploy/controller.yaml by its labels, in its namespace, on its
// port name, and the rules' job is that Service's name.
func TestMonitoringServiceMonitor(t *testing.T) {
	root := testenv.ModuleRoot(t)
	var svc map[string]any
	for _, d := range manifestDocs(t, "deploy/controller.yaml", readFile(t, filepath.Join(root, "deploy", "controller.yaml"))) {
		if d["kind"] == "Service" && str(d, "metadata", "name") == metricsService {
			svc = d
		}
	}
	if svc == nil {
		t.Fatalf("deploy/controller.yaml has no Service %s", metricsService)
	}
	var sm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			NamespaceSelector struct {
				MatchNames []string `json:"matchNames"`
			} `json:"namespaceSelector"`
			Endpoints []struct {
				Port     string `json:"port"`
				Path     string `json:"path"`
				Interval string `json:"interval"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(readFile(t, monitoringPath(t, monitorFile)), &sm); err != nil {
		t.Fatalf("%s: %v", monitorFile, err)
	}
	if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Kind != "ServiceMonitor" || sm.Metadata.Name == "" {
		t.Errorf("%s is %s %s %s, want a monitoring.coreos.com/v1 ServiceMonitor", monitorFile, sm.APIVersion, sm.Kind, sm.Metadata.Name)
	}
	svcLabels, _ := svc["metadata"].(map[string]any)["labels"].(map[string]any)
	if len(sm.Spec.Selector.MatchLabels) == 0 {
		t.Errorf("%s selects every Service", monitorFile)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svcLabels[k] != v {
			t.Errorf("%s selects %s=%s; Service %s has %s=%v", monitorFile, k, v, metricsService, k, svcLabels[k])
		}
	}
	if ns := str(svc, "metadata", "namespace"); !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{ns}) {
		t.Errorf("%s: namespaceSelector %v, want [%s]", monitorFile, sm.Spec.NamespaceSelector.MatchNames, ns)
	}
	var ports []string
	for _, p := range svc["spec"].(map[string]any)["ports"].([]any) {
		ports = append(ports, p.(map[string]any)["name"].(string))
	}
	if len(sm.Spec.Endpoints) != 1 || !slices.Contains(ports, sm.Spec.Endpoints[0].Port) || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("%s: endpoints %+v, want one on /metrics at a port of %v", monitorFile, sm.Spec.Endpoints, ports)
	}
	// up{job=...} in the rules and the dashboard's job variable name the
	// job the operator gives this Service.
	for _, q := range allQueries(t) {
		e, err := promql.ParseExpr(q.expr)
		must(t, err)
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				for _, m := range vs.LabelMatchers {
					if m.Name == "job" && m.Value != metricsJob && m.Value != "x" {
						t.Errorf("%s: job %q, want %q (the Service's name)", q.where, m.Value, metricsJob)
					}
				}
			}
			return nil
		})
	}
	if !bytes.Contains(readFile(t, monitoringPath(t, dashboardFile)), []byte(`"query": "`+metricsJob+`"`)) {
		t.Errorf("%s: the job variable's default is not %s", dashboardFile, metricsJob)
	}
}

// TestMonitoringKustomization: kubectl kustomize renders deploy/monitoring
// to the ServiceMonitor, the PrometheusRule and the dashboard's ConfigMap
// (the JSON unchanged, labelled for Grafana's sidecar); deploy/ itself
// does not include it.
func TestMonitoringKustomization(t *testing.T) {
	root := testenv.ModuleRoot(t)
	kubectl := testenv.KubeBinary(t, "kubectl")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, kubectl, "kustomize", filepath.Join(root, "deploy", "monitoring")).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl kustomize deploy/monitoring: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for _, d := range manifestDocs(t, "rendered deploy/monitoring", out) {
		got[d["kind"].(string)] = d
		if ns := str(d, "metadata", "namespace"); ns != "kube-ipam" {
			t.Errorf("rendered %s %s in namespace %q, want kube-ipam", d["kind"], str(d, "metadata", "name"), ns)
		}
	}
	var kinds []string
	for k := range got {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	if !slices.Equal(kinds, []string{"ConfigMap", "PrometheusRule", "ServiceMonitor"}) {
		t.Fatalf("deploy/monitoring renders %v, want ConfigMap, PrometheusRule, ServiceMonitor", kinds)
	}
	cm := got["ConfigMap"]
	if str(cm, "metadata", "labels", "grafana_dashboard") != "1" {
		t.Errorf("the dashboard ConfigMap is not labelled grafana_dashboard=1")
	}
	if str(cm, "data", dashboardFile) != string(readFile(t, monitoringPath(t, dashboardFile))) {
		t.Errorf("the dashboard ConfigMap's %s differs from the file", dashboardFile)
	}
	if bytes.Contains(readFile(t, filepath.Join(root, "deploy", "kustomization.yaml")), []byte("monitoring")) {
		t.Errorf("deploy/kustomization.yaml includes monitoring, which is off by default")
	}
}

// TestMonitoringMetricsExist runs the real controller with one allocation
// leaked and freed by GC, and checks that every metric an alert rule or a
// dashboard panel uses is in its /metrics (histograms by their _bucket,
// _sum and _count series), with the labels the queries match and group on.
func TestMonitoringMetricsExist(t *testing.T) {
	qs := allQueries(t)
	c := newCluster(t, "node-1")
	ctl := c.startController()
	p := c.pod("leaky-0", "node-1")
	ip, _ := c.add(p)
	c.forceDelete(p)
	c.waitFreed("the leaked address freed by the controller", 30*time.Second, ip)

	// scraped: metric name -> label names of its series.
	var scraped map[string]map[string]bool
	var missing []string
	c.kube.WaitFor(t, "every metric of the rules and the dashboard in /metrics", 15*time.Second, func() (bool, error) {
		m, err := ctl.scrape()
		if err != nil {
			return false, err
		}
		scraped = map[string]map[string]bool{}
		for series := range m {
			name, rest, _ := strings.Cut(series, "{")
			if scraped[name] == nil {
				scraped[name] = map[string]bool{}
			}
			for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
				if k, _, ok := strings.Cut(kv, "="); ok {
					scraped[name][k] = true
				}
			}
		}
		missing = nil
		for _, q := range qs {
			u, err := inspect(q)
			if err != nil {
				return false, err
			}
			for _, name := range u.metrics {
				if scraped[name] == nil && !promSeries[name] {
					missing = append(missing, q.where+": "+name)
				}
			}
		}
		return len(missing) == 0, fmt.Errorf("not in the scrape: %v", missing)
	})

	// Every label name the queries use exists on the series they read.
	all := map[string]bool{}
	for _, ls := range scraped {
		for l := range ls {
			all[l] = true
		}
	}
	for _, q := range qs {
		u, _ := inspect(q)
		for name, ls := range u.matched {
			for _, l := range ls {
				if !targetLabels[l] && !scraped[name][l] {
					t.Errorf("%s: %s has no label %q in the scrape", q.where, name, l)
				}
			}
		}
		for _, l := range u.grouped {
			if !targetLabels[l] && !all[l] {
				t.Errorf("%s: groups or matches on %q, which no scraped series has", q.where, l)
			}
		}
	}
	for name, ls := range scraped {
		if strings.HasPrefix(name, "kube_ipam_") && name != "kube_ipam_leader" && !ls["network"] {
			t.Errorf("%s has no network label", name)
		}
	}
	t.Logf("%d queries, %d metric names scraped", len(qs), len(scraped))
}
