package store

import (
	"context"
	"errors"
	"fmt"
	"io"
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
