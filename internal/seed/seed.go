// Package seed holds the seed guide's files verbatim (cloudnativer/kube-ipam's
// "web and database network security layering" guide, section 3.1), so the
// tests and the lab start from exactly what users copied.
package seed

import _ "embed"

// MultusConf is the guide's /etc/cni/net.d/10-multus.conf, byte for byte.
//
//go:embed 10-multus.conf
var MultusConf []byte
