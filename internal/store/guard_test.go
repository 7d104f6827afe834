package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"syscall"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Every way etcd can fail to answer in time is "unavailable" (CNI code 11);
// a refusal is not. The first rows are the messages seen in the fault runs.
func TestIsUnavailableAndRefused(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
		refused     bool
	}{
		{"etcd 3.4 own deadline as Unknown", status.Error(codes.Unknown, "context deadline exceeded"), true, false},
		{"wrapped Unknown deadline", fmt.Errorf("claim transaction (attempt 1): %w", status.Error(codes.Unknown, "context deadline exceeded")), true, false},
		{"connection torn down", status.Error(codes.Unavailable, "error reading from server: EOF"), true, false},
		{"EOF", fmt.Errorf("claim: %w", io.EOF), true, false},
		{"request timed out", rpctypes.ErrTimeout, true, false},
		{"no leader", rpctypes.ErrNoLeader, true, false},
		{"leader changed", rpctypes.ErrLeaderChanged, true, false},
		{"too many requests", rpctypes.ErrTooManyRequests, true, false},
		{"connection reset", fmt.Errorf("x: %w", syscall.ECONNRESET), true, false},
		{"call deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), true, false},
		{"unknown outcome", &AmbiguousError{Err: io.EOF}, true, false},
		{"lost member", &StallError{Dropped: []string{"http://10.0.0.1:2379"}}, true, false},
		{"no leader for long", &NoLeaderError{Answered: []string{"a"}}, true, false},
		{"permission denied", rpctypes.ErrPermissionDenied, false, true},
		{"request too large", rpctypes.ErrRequestTooLarge, false, true},
		{"other Unknown", status.Error(codes.Unknown, "something else"), false, false},
		{"plain error", errors.New("corrupt record"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsUnavailable(tc.err); got != tc.unavailable {
				t.Errorf("IsUnavailable(%v) = %v, want %v", tc.err, got, tc.unavailable)
			}
			if got := refused(tc.err); got != tc.refused {
				t.Errorf("refused(%v) = %v, want %v", tc.err, got, tc.refused)
			}
		})
	}
}

// judge keeps the members fit to serve a linearizable request: a leader
// known, the current term, caught up. A member back from a partition
// answers at once but is on an old term or far behind.
func TestJudge(t *testing.T) {
	all := []string{"a", "b", "c"}
	m := func(ep string, leader, term, index, applied uint64) memberStatus {
		return memberStatus{Endpoint: ep, Leader: leader, Term: term, Index: index, Applied: applied}
	}
	for _, tc := range []struct {
		name     string
		sts      []memberStatus
		answered []string
		fit      []string
	}{
		{"healthy", []memberStatus{m("c", 1, 5, 100, 100), m("a", 1, 5, 100, 99), m("b", 1, 5, 101, 100)}, all, all},
		{"one silent", []memberStatus{m("a", 2, 6, 200, 200), m("b", 2, 6, 200, 200)}, []string{"a", "b"}, []string{"a", "b"}},
		{"no leader anywhere", []memberStatus{m("a", 0, 7, 200, 200), m("b", 0, 7, 200, 200)}, []string{"a", "b"}, nil},
		{"isolated member without a leader", []memberStatus{m("a", 0, 9, 200, 200), m("b", 2, 6, 300, 300), m("c", 2, 6, 300, 300)}, all, []string{"b", "c"}},
		{"back on an old term", []memberStatus{m("a", 1, 5, 429, 429), m("b", 2, 6, 1449, 1449), m("c", 2, 6, 1449, 1448)}, all, []string{"b", "c"}},
		{"current term but far behind", []memberStatus{m("a", 2, 6, 429, 429), m("b", 2, 6, 1449, 1449), m("c", 2, 6, 1449, 1449)}, all, []string{"b", "c"}},
		{"slightly behind is fine", []memberStatus{m("a", 2, 6, 1440, 1400), m("b", 2, 6, 1449, 1449)}, []string{"a", "b"}, []string{"a", "b"}},
		{"split view of the leader", []memberStatus{m("a", 3, 6, 100, 100), m("b", 2, 6, 100, 100), m("c", 2, 6, 100, 100)}, all, []string{"b", "c"}},
		{"nobody answered", nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := judge(all, tc.sts)
			if !slices.Equal(got.answered, tc.answered) || !slices.Equal(got.leader, tc.fit) {
				t.Errorf("judge = answered %v fit %v, want %v %v", got.answered, got.leader, tc.answered, tc.fit)
			}
		})
	}
}
