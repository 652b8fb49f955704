package events

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestRetry(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	t.Run("TransientErrorsAreRetried", func(t *testing.T) {
		t.Parallel()
		calls := 0
		err := Retry(t.Context(), log, "opening", time.Millisecond, func(context.Context) error {
			calls++
			if calls < 3 {
				return context.DeadlineExceeded // a stream electing its leader
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("err %v after %d calls, want nil after 3", err, calls)
		}
	})
	t.Run("OtherErrorsAreNot", func(t *testing.T) {
		t.Parallel()
		calls := 0
		err := Retry(t.Context(), log, "opening", time.Millisecond, func(context.Context) error {
			calls++
			return jetstream.ErrStreamNotFound
		})
		if !errors.Is(err, jetstream.ErrStreamNotFound) || calls != 1 {
			t.Fatalf("err %v after %d calls, want ErrStreamNotFound after 1", err, calls)
		}
	})
	t.Run("StopsWithItsContext", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		err := Retry(ctx, log, "opening", time.Millisecond, func(context.Context) error { return jetstream.ErrNoStreamResponse })
		if !errors.Is(err, jetstream.ErrNoStreamResponse) || ctx.Err() == nil {
			t.Fatalf("err %v, ctx %v: want the last error once ctx ended", err, ctx.Err())
		}
	})
}
