package events

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// samples returns one populated payload per known type.
func samples() []Payload {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)
	code := 3
	return []Payload{
		&TaskSubmitted{
			TaskID: "t1", Name: "n", Image: "busybox", Cmd: "echo hi", ExecutionType: "cpu",
			StorageMounts: map[string]string{"shared": "/data"}, Tags: map[string]string{"a": "1"},
			PersistLogs: true, MaxRetries: 3, IdempotencyKey: "k", CreatedAt: at,
			RetryBackoffMinMs: 1000, RetryBackoffMaxMs: 60000, MaxNodeLosses: 5, TimeoutMs: 30000,
			CallbackURL: "https://example.com/hooks/cb",
		},
		&SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "n-t1-a1"},
		&AttemptClaimed{TaskID: "t1", Attempt: 1, NodeID: "n1", Runner: "b2/runner", Supersedes: "b1/runner"},
		&ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1", ContainerID: "c", ContainerName: "n-t1-a1", StartedAt: at},
		&StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "no such image", NodeFault: true},
		&ContainerExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 3, OOMKilled: true, StartedAt: at, FinishedAt: at},
		&LogsArchived{TaskID: "t1", Attempt: 1, Object: "t1/1", Bytes: 10, Truncated: true},
		&TaskCompleted{TaskID: "t1", Attempt: 1},
		&TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, NotBefore: at, Cause: CauseExitCode, ExitCode: &code},
		&TaskFailed{TaskID: "t1", Attempt: 4, Cause: CauseExitCode, ExitCode: &code},
		&NodeRegistered{
			NodeID: "n1", Hostname: "tcp://h:2375", Slots: map[string]int{"cpu": 2}, RunnerProvider: "docker", RegisteredAt: at,
			Mounts: map[string]string{"shared": "/mnt/nfs"},
		},
		&NodeUp{NodeID: "n1", At: at},
		&NodeUnstable{NodeID: "n1", Error: "refused", At: at},
		&NodeDown{NodeID: "n1", Error: "refused", At: at},
		&CancelRequested{TaskID: "t1", Reason: "no longer needed"},
		&TaskCancelled{TaskID: "t1", Attempt: 2},
		&KillRequested{TaskID: "t1", Attempt: 2},
		&RetryRequested{TaskID: "t1"},
		&MarkedAsError{TaskID: "t1", Reason: "timeout"},
		&TaskDeleted{TaskID: "t1"},
		&NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 4}, Mounts: map[string]string{}},
		&NodeAcceptanceChanged{NodeID: "n1", Accept: false},
		&NodeRemoved{NodeID: "n1"},
		&NodeKillRequested{NodeID: "n1"},
		&StaleAttemptExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 137, Running: true},
		&WebhookAttempted{
			TaskID: "t1", OutcomeSeq: 9, OutcomeID: "01KB3M8ZQ4V4X0S7J2QJ9G7T3E", Attempt: 1,
			DeliveryID: "01KB3M8ZQ4V4X0S7J2QJ9G7T3E-1", URL: "https://example.com/hooks/cb", At: at,
			StatusCode: 503, DurationMs: 12, NextAttemptAt: at.Add(time.Second),
		},
		&WebhookDelivered{TaskID: "t1", OutcomeSeq: 9, Attempt: 2, StatusCode: 200},
		&WebhookAbandoned{TaskID: "t1", OutcomeSeq: 9, Attempts: 10, Error: "connection refused"},
	}
}

func TestEveryKnownTypeHasASample(t *testing.T) {
	t.Parallel()
	seen := map[Type]bool{}
	for _, p := range samples() {
		seen[p.EventType()] = true
	}
	for _, typ := range Types() {
		if !seen[typ] {
			t.Errorf("no sample for %s", typ)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, p := range samples() {
		t.Run(string(p.EventType()), func(t *testing.T) {
			t.Parallel()
			env, err := New("agg-1:1:x", p, Meta{CorrelationID: "req", CausationID: "cause", Actor: "b1/test"})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			b, err := Encode(env)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(env, got) {
				t.Fatalf("envelope changed in round trip:\n%+v\n%+v", env, got)
			}
			gp, err := got.Payload()
			if err != nil {
				t.Fatalf("Payload: %v", err)
			}
			if !reflect.DeepEqual(p, gp) {
				t.Fatalf("payload changed in round trip:\n%+v\n%+v", p, gp)
			}
		})
	}
}

func TestTypeNamesAndSubjects(t *testing.T) {
	t.Parallel()
	for _, typ := range Types() {
		agg, name := typ.Aggregate(), typ.Name()
		if agg != AggregateTask && agg != AggregateNode {
			t.Errorf("%s: aggregate %q", typ, agg)
		}
		if want := agg + "." + name + ".v1"; string(typ) != want {
			t.Errorf("type %s does not follow <aggregate>.<name>.v1", typ)
		}
	}
	if got := Subject(TypeTaskCompleted, "abc"); got != "cb.ev.task.abc.completed" {
		t.Fatalf("subject = %q", got)
	}
	if got := Type("nonsense").Aggregate(); got != "" {
		t.Fatalf("aggregate of malformed type = %q", got)
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		key  string
		p    Payload
		want error
	}{
		"NoKey":          {key: "", p: &NodeUp{NodeID: "n"}, want: ErrNoKey},
		"DotInAggregate": {key: "k", p: &NodeUp{NodeID: "a.b"}},
		"Wildcard":       {key: "k", p: &NodeUp{NodeID: "*"}},
		"Empty":          {key: "k", p: &NodeUp{}},
		"NilPayload":     {key: "k", p: nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.key, tc.p, Meta{})
			if err == nil {
				t.Fatal("expected an error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v is not %v", err, tc.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	valid, err := New("k", &TaskCompleted{TaskID: "t1", Attempt: 1}, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Encode(valid)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	mutate := func(f func(map[string]any)) []byte {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		f(c)
		out, _ := json.Marshal(c)
		return out
	}
	cases := map[string][]byte{
		"Empty":         nil,
		"NotJSON":       []byte("{"),
		"Array":         []byte("[]"),
		"Trailing":      append(append([]byte{}, b...), []byte(" {}")...),
		"NoID":          mutate(func(c map[string]any) { delete(c, "id") }),
		"NoKey":         mutate(func(c map[string]any) { delete(c, "key") }),
		"BadType":       mutate(func(c map[string]any) { c["type"] = "completed" }),
		"BadAggregate":  mutate(func(c map[string]any) { c["aggregate_id"] = "a.b" }),
		"NoData":        mutate(func(c map[string]any) { delete(c, "data") }),
		"TypeIsNumber":  mutate(func(c map[string]any) { c["type"] = 5 }),
		"TimeIsGarbage": mutate(func(c map[string]any) { c["time"] = "yesterday" }),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode(in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%q) error = %v, want ErrMalformed", in, err)
			}
		})
	}
}

func TestUnknownTypeDecodesButPayloadIsSkippable(t *testing.T) {
	t.Parallel()
	in := `{"id":"01J","type":"task.teleported.v1","aggregate_id":"t1","key":"k","time":"2026-01-01T00:00:00Z","data":{}}`
	env, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	_, err = env.Payload()
	if !errors.Is(err, ErrUnknownType) {
		t.Fatalf("Payload error = %v, want ErrUnknownType", err)
	}
}

func TestPayloadWrongShapeIsMalformed(t *testing.T) {
	t.Parallel()
	in := `{"id":"01J","type":"task.completed.v1","aggregate_id":"t1","key":"k","time":"2026-01-01T00:00:00Z","data":{"attempt":"one"}}`
	env, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if _, err := env.Payload(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Payload error = %v, want ErrMalformed", err)
	}
}

func TestMsgAlwaysCarriesTheKey(t *testing.T) {
	t.Parallel()
	env, err := New("t1:2:completed", &TaskCompleted{TaskID: "t1", Attempt: 2}, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Msg(env)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != "t1:2:completed" {
		t.Fatalf("Nats-Msg-Id = %q", got)
	}
	if m.Subject != "cb.ev.task.t1.completed" {
		t.Fatalf("subject = %q", m.Subject)
	}
	env.Key = ""
	if _, err := Msg(env); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("Msg without key: err = %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, p := range samples() {
		env, err := New("k", p, Meta{Actor: "fuzz"})
		if err != nil {
			f.Fatal(err)
		}
		b, _ := Encode(env)
		f.Add(b)
	}
	f.Add([]byte(`{"id":"x","type":"task.completed.v1","aggregate_id":"t","key":"k","data":null}`))
	f.Add([]byte(`{"data":{"exit_code":1e400}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v is not ErrMalformed", err)
			}
			return
		}
		// A decoded envelope re-encodes and decodes to the same thing.
		out, err := Encode(env)
		if err != nil {
			t.Fatalf("Encode of decoded envelope: %v", err)
		}
		again, err := Decode(out)
		if err != nil {
			t.Fatalf("Decode of re-encoded envelope: %v", err)
		}
		if again.ID != env.ID || again.Type != env.Type || again.Key != env.Key || !again.Time.Equal(env.Time) {
			t.Fatalf("round trip changed the envelope")
		}
		if _, err := env.Payload(); err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
			t.Fatalf("Payload error %v is neither ErrMalformed nor ErrUnknownType", err)
		}
	})
}

// TestDocsListEveryType keeps docs/events.md, the public contract, in step
// with the registry.
func TestDocsListEveryType(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "events.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range Types() {
		if !strings.Contains(string(doc), "`"+string(typ)+"`") {
			t.Errorf("docs/events.md does not describe %s", typ)
		}
	}
}
