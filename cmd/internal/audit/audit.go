// Package audit prints a task's history for people: every event in log
// order with the fold's verdict, as GET /tasks/:uuid/events returns it.
package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cbroker/broker/gateway"
)

// Task fetches a task's timeline from the broker at api and writes it to w.
func Task(ctx context.Context, api, id string, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(api, "/")+"/tasks/"+id+"/events", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking the broker at %s: %w", api, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the broker answered %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var timeline []gateway.TimelineEntry
	if err := json.Unmarshal(body, &timeline); err != nil {
		return fmt.Errorf("reading the timeline: %w", err)
	}
	return Print(w, id, timeline)
}

// Print writes a timeline as a table: sequence, time, event, verdict, and
// the event's data (or why it was rejected).
func Print(w io.Writer, id string, timeline []gateway.TimelineEntry) error {
	fmt.Fprintf(w, "task %s: %d events\n", id, len(timeline))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tVERDICT\tACTOR\tDETAIL")
	for _, e := range timeline {
		at := ""
		if e.Time != nil {
			at = *e.Time
		}
		verdict, detail := "accepted", compact(e.Data)
		if !e.Accepted {
			verdict, detail = "REJECTED", e.Reason
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, at, e.Type.Name(), verdict, e.Actor, detail)
	}
	return tw.Flush()
}

// compact renders an event's data on one line, without the task id every
// event repeats.
func compact(data json.RawMessage) string {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return string(data)
	}
	delete(m, "task_id")
	b, err := json.Marshal(m)
	if err != nil {
		return string(data)
	}
	return string(b)
}
