package serve

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// UntrustedNetworkError reports a TCP listen address that hosts other than
// this one can reach, refused because NBD has no authentication.
type UntrustedNetworkError struct {
	Address string // as given, HOST:PORT
	Reason  string // which address is not loopback
}

func (e UntrustedNetworkError) Error() string {
	return fmt.Sprintf("listen on tcp:%s: %s; NBD has no authentication: anyone who reaches the address can read and write the device", e.Address, e.Reason)
}

// AddressError reports a listen address that is not unix:PATH or
// tcp:HOST:PORT.
type AddressError struct {
	Address string
}

func (e AddressError) Error() string {
	return fmt.Sprintf("listen address %q: want unix:PATH or tcp:HOST:PORT", e.Address)
}

// ParseAddress splits a listen address, unix:PATH or tcp:HOST:PORT, into
// the network and address net.Listen takes.
func ParseAddress(s string) (network, addr string, err error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || (network != "unix" && network != "tcp") || addr == "" {
		return "", "", AddressError{Address: s}
	}
	if network == "tcp" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", "", AddressError{Address: s}
		}
	}
	return network, addr, nil
}

// Resolver looks up a host name's addresses, as net.Resolver.LookupHost.
type Resolver func(ctx context.Context, host string) ([]string, error)

// CheckLoopback returns nil when the TCP address HOST:PORT can be reached
// only from this host: HOST is a loopback address (127.0.0.0/8, ::1) or a
// name all of whose addresses are loopback. A wildcard (empty HOST,
// 0.0.0.0, ::), another address, or a name with any other address is
// UntrustedNetworkError. lookup resolves names; nil uses the system's
// resolver.
func CheckLoopback(ctx context.Context, addr string, lookup Resolver) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return AddressError{Address: "tcp:" + addr}
	}
	if host == "" {
		return UntrustedNetworkError{Address: addr, Reason: "no host means every address of this host (a wildcard)"}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return checkIP(addr, host, ip)
	}
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	addrs, err := lookup(ctx, host)
	if err != nil {
		return fmt.Errorf("listen on tcp:%s: resolve %s: %w", addr, host, err)
	}
	if len(addrs) == 0 {
		return fmt.Errorf("listen on tcp:%s: resolve %s: no addresses", addr, host)
	}
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("listen on tcp:%s: resolve %s: bad address %q", addr, host, a)
		}
		if err := checkIP(addr, host+" resolves to "+a+", which", ip); err != nil {
			return err
		}
	}
	return nil
}

// checkIP refuses an address that is not loopback; what names it in the
// reason.
func checkIP(addr, what string, ip netip.Addr) error {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return nil
	case ip.IsUnspecified():
		return UntrustedNetworkError{Address: addr, Reason: what + " is a wildcard: every address of this host"}
	}
	return UntrustedNetworkError{Address: addr, Reason: what + " is not a loopback address"}
}
