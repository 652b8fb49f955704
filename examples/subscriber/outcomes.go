package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cbroker/broker/events"
)

// outcome is one line of the output file: a task's terminal event.
type outcome struct {
	// Seq is the event's stream sequence: its position in the log, and the
	// key that makes handling idempotent.
	Seq      uint64      `json:"seq"`
	EventID  string      `json:"event_id"`
	Type     events.Type `json:"type"`
	Status   string      `json:"status"`
	TaskID   string      `json:"task_id"`
	Attempt  int         `json:"attempt"`
	ExitCode *int        `json:"exit_code,omitempty"`
	Cause    string      `json:"cause,omitempty"`
	Error    string      `json:"error,omitempty"`
	Time     time.Time   `json:"time"`
}

// errNotOutcome is returned by outcomeOf for events that do not end a task.
var errNotOutcome = errors.New("not a task outcome")

// outcomeOf reads a task's outcome from an event. Types this version of the
// events module does not know match events.ErrUnknownType.
func outcomeOf(env events.Envelope) (outcome, error) {
	p, err := env.Payload()
	if err != nil {
		return outcome{}, err
	}
	o := outcome{
		Seq: env.Seq, EventID: env.ID, Type: env.Type, Status: env.Type.Name(),
		TaskID: env.AggregateID, Time: env.Time,
	}
	switch p := p.(type) {
	case *events.TaskCompleted:
		o.Attempt, o.ExitCode = p.Attempt, &p.ExitCode
	case *events.TaskFailed:
		o.Attempt, o.ExitCode, o.Cause, o.Error = p.Attempt, p.ExitCode, p.Cause, p.Error
	case *events.TaskCancelled:
		o.Attempt = p.Attempt
	default:
		return outcome{}, fmt.Errorf("%w: %s", errNotOutcome, env.Type)
	}
	return o, nil
}

// journal is the output file, one JSON outcome per line in stream order.
// It is also the subscriber's only memory: the sequence of its last line is
// the last event handled, so the record of an outcome and the record that
// it was handled are one write.
type journal struct {
	f    *os.File
	last uint64
}

// openJournal opens or creates the output file and reads the sequence of
// its last line. A last line without its newline is a write a crash cut
// short; it was never acknowledged, so it is cut off and will be written
// again when the event comes back.
func openJournal(path string) (*journal, error) {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	j := &journal{f: f}
	if err := j.recover(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// Make the new file's name durable too.
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return j, nil
}

func (j *journal) recover() error {
	r := bufio.NewReader(j.f)
	var end int64 // offset just after the last complete line
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break // line, if any, is a torn write
		}
		if err != nil {
			return err
		}
		var o outcome
		if err := json.Unmarshal(line, &o); err != nil {
			return fmt.Errorf("line at offset %d: %w", end, err)
		}
		end += int64(len(line))
		j.last = o.Seq
	}
	if err := j.f.Truncate(end); err != nil {
		return err
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	_, err := j.f.Seek(end, io.SeekStart)
	return err
}

// append writes one outcome and waits until it is on disk.
func (j *journal) append(o outcome) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing outcome %d: %w", o.Seq, err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("syncing outcome %d: %w", o.Seq, err)
	}
	j.last = o.Seq
	return nil
}

func (j *journal) Close() error { return j.f.Close() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
