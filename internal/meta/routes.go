package meta

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// setDefaultRoutes makes ifname the pod's default route for each gateway's
// address family (the annotation's default-route): the default routes of
// that family through other interfaces are deleted first, as multus does.
func setDefaultRoutes(nsPath, ifname string, gateways []string) error {
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nl.Close()
	link, err := nl.LinkByName(ifname)
	if err != nil {
		return err
	}
	for _, g := range gateways {
		gw := net.ParseIP(g)
		if gw == nil {
			return fmt.Errorf("gateway %q is not an address", g)
		}
		family := netlink.FAMILY_V6
		if gw.To4() != nil {
			family = netlink.FAMILY_V4
		}
		routes, err := nl.RouteList(nil, family)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if isDefault(r) {
				if err := nl.RouteDel(&r); err != nil {
					return fmt.Errorf("deleting the default route via %v: %v", r.Gw, err)
				}
			}
		}
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("adding the default route via %s: %v", gw, err)
		}
	}
	return nil
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
