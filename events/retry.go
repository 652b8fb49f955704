package events

import (
	"context"
	"log/slog"
	"time"
)

// Retry runs f until it succeeds, fails with an error that is not
// Transient, or ctx ends, pausing delay between tries and logging each
// transient failure with what. It is for the steps a long-running component
// takes when it starts (opening a stream, a bucket or an object store, which
// asks the asset's leader): started while that leader is being elected, a
// component would otherwise fail, and with it the whole process. Each try
// is bounded by f's own context: give it a deadline inside f when the call
// has none of its own.
func Retry(ctx context.Context, log *slog.Logger, what string, delay time.Duration, f func(context.Context) error) error {
	for {
		err := f(ctx)
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return err
		}
		log.WarnContext(ctx, what+"; retrying", slog.Any("error", err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return err
		}
	}
}
