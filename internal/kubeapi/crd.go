package kubeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"time"

	"sigs.k8s.io/yaml"
)

const crdPath = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

// InstallCRDs creates (or updates to these versions) the
// CustomResourceDefinitions of files (YAML, one CRD each) and waits until
// the API server serves them (condition Established), or ctx ends.
func InstallCRDs(ctx context.Context, c *Client, fsys fs.FS, files ...string) error {
	var names []string
	for _, f := range files {
		y, err := fs.ReadFile(fsys, f)
		if err != nil {
			return err
		}
		body, err := yaml.YAMLToJSON(y)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		var crd map[string]any
		if err := json.Unmarshal(body, &crd); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		name, _ := crd["metadata"].(map[string]any)["name"].(string)
		names = append(names, name)
		resp, err := c.Do(ctx, Request{Method: http.MethodPost, Path: crdPath, Body: body})
		if err != nil {
			return fmt.Errorf("creating CRD %s: %w", name, err)
		}
		switch resp.Code {
		case http.StatusCreated:
			continue
		case http.StatusConflict:
		default:
			return fmt.Errorf("creating CRD %s: %w", name, resp.Status())
		}
		cur, err := c.Do(ctx, Request{Path: crdPath + "/" + url.PathEscape(name)})
		if err != nil {
			return fmt.Errorf("reading CRD %s: %w", name, err)
		}
		if cur.Code != http.StatusOK {
			return fmt.Errorf("reading CRD %s: %w", name, cur.Status())
		}
		var old struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(cur.Body, &old); err != nil {
			return fmt.Errorf("reading CRD %s: %w", name, err)
		}
		crd["metadata"].(map[string]any)["resourceVersion"] = old.Metadata.ResourceVersion
		body, _ = json.Marshal(crd)
		resp, err = c.Do(ctx, Request{Method: http.MethodPut, Path: crdPath + "/" + url.PathEscape(name), Body: body})
		if err != nil {
			return fmt.Errorf("updating CRD %s: %w", name, err)
		}
		if resp.Code != http.StatusOK {
			return fmt.Errorf("updating CRD %s: %w", name, resp.Status())
		}
	}
	for _, name := range names {
		if err := waitEstablished(ctx, c, name); err != nil {
			return err
		}
	}
	return nil
}

// waitEstablished polls a CRD until its condition Established is True.
func waitEstablished(ctx context.Context, c *Client, name string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "not read yet"
	for {
		resp, err := c.Do(ctx, Request{Path: crdPath + "/" + url.PathEscape(name)})
		switch {
		case err != nil:
			last = err.Error()
		case resp.Code != http.StatusOK:
			last = resp.Status().Error()
		default:
			var crd struct {
				Status struct {
					Conditions []struct {
						Type, Status, Message string
					} `json:"conditions"`
				} `json:"status"`
			}
			if err := json.Unmarshal(resp.Body, &crd); err != nil {
				return fmt.Errorf("reading CRD %s: %w", name, err)
			}
			last = "no Established condition"
			for _, cond := range crd.Status.Conditions {
				if cond.Type == "Established" {
					if cond.Status == "True" {
						return nil
					}
					last = cond.Status + ": " + cond.Message
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for CRD %s to be established (%s): %w", name, last, ctx.Err())
		case <-tick.C:
		}
	}
}
