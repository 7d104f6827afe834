package meta

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
)

// levels maps multus's logLevel values (and the usual slog names) to slog
// levels. "error" includes warnings (security notices such as an
// unselected network); "panic" is silent, as multus's default is.
var levels = map[string]slog.Level{
	"debug": slog.LevelDebug, "verbose": slog.LevelInfo, "info": slog.LevelInfo,
	"warn": slog.LevelWarn, "warning": slog.LevelWarn, "error": slog.LevelWarn, "panic": slog.LevelError + 100,
}

// openLog logs to logFile (append, 0600) and, unless logToStderr is false,
// to stderr. Never to stdout, which carries the CNI result.
func openLog(c *Conf, stderr io.Writer) (*slog.Logger, func()) {
	lv := levels[strings.ToLower(c.LogLevel)]
	opts := &slog.HandlerOptions{Level: lv}
	var handlers []slog.Handler
	closeFn := func() {}
	if c.LogToStderr == nil || *c.LogToStderr {
		handlers = append(handlers, slog.NewTextHandler(stderr, opts))
	}
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			handlers = append(handlers, slog.NewTextHandler(f, opts))
			closeFn = func() { f.Close() }
		} else {
			slog.New(slog.NewTextHandler(stderr, nil)).Warn("cannot open logFile", "path", c.LogFile, "err", err)
		}
	}
	return slog.New(fanout(handlers)).With("plugin", "kube-multus", "pid", os.Getpid()), closeFn
}

type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			_ = h.Handle(ctx, r.Clone())
		}
	}
	return nil
}

func (f fanout) WithAttrs(a []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(a)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}
