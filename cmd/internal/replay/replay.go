// Package replay prints the pool as it stood at a point of the log, for
// people: nodes with their slots and jobs, task counts, queues and the
// newest tasks, as GET /status?at= and GET /status/tasks?at= return them.
package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cbroker/broker/gateway"
	"github.com/cbroker/broker/projections"
)

// Options selects what Show prints.
type Options struct {
	// API is the broker's HTTP API.
	API string
	// At is a stream sequence or an RFC 3339 time.
	At string
	// Tasks is how many of the newest tasks to list (0: none).
	Tasks int
	// JSON prints the answers as they are instead of tables.
	JSON bool
}

// Show asks the broker for the pool at o.At and writes it to w.
func Show(ctx context.Context, o Options, w io.Writer) error {
	if _, err := projections.ParseTarget(o.At); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	base := strings.TrimRight(o.API, "/")
	at := url.QueryEscape(o.At)
	var pool gateway.Pool
	rawPool, err := get(ctx, base+"/status?at="+at, &pool)
	if err != nil {
		return err
	}
	var tasks []projections.TaskView
	rawTasks := []byte("[]")
	if o.Tasks > 0 {
		if rawTasks, err = get(ctx, fmt.Sprintf("%s/status/tasks?at=%s&limit=%d", base, at, o.Tasks), &tasks); err != nil {
			return err
		}
	}
	if o.JSON {
		_, err := fmt.Fprintf(w, "{\"pool\":%s,\"tasks\":%s}\n", rawPool, rawTasks)
		return err
	}
	return Print(w, pool, tasks)
}

func get(ctx context.Context, u string, out any) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the broker: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the broker answered %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return nil, fmt.Errorf("reading %s: %w", u, err)
	}
	return body, nil
}

// Print writes the pool and tasks as tables.
func Print(w io.Writer, pool gateway.Pool, tasks []projections.TaskView) error {
	at := "before the first event"
	if !pool.At.IsZero() {
		at = pool.At.UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(w, "pool at sequence %d (%s)\n\n", pool.Seq, at)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATUS\tACCEPTS\tSLOTS BUSY/TOTAL\tJOBS")
	for _, n := range pool.Nodes {
		jobs := make([]string, 0, len(n.Jobs))
		for _, j := range n.Jobs {
			jobs = append(jobs, fmt.Sprintf("%s(%s,%s)", j.Name, short(j.UUID), j.Status))
		}
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", n.Name, n.Status, n.AcceptNewTasks, slots(n.NodeView), strings.Join(jobs, " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\ntasks:  %s\nqueues: %s\n", counts(pool.Tasks), counts(pool.Queues))
	if len(tasks) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tNAME\tTYPE\tSTATUS\tATTEMPT\tEXIT\tSLOT")
	for _, t := range tasks {
		exit, slot := "-", "-"
		if t.ExitCode != nil {
			exit = fmt.Sprint(*t.ExitCode)
		}
		if t.Slot != nil {
			slot = t.Slot.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.UUID, t.Name, t.ExecutionType, t.Status, t.Attempt, exit, slot)
	}
	return tw.Flush()
}

func slots(n projections.NodeView) string {
	busy, total := map[string]int{}, map[string]int{}
	for _, s := range n.Slots {
		total[s.ExecutionType]++
		if s.Status != projections.SlotAvailable {
			busy[s.ExecutionType]++
		}
	}
	var out []string
	for _, typ := range slices.Sorted(maps.Keys(total)) {
		out = append(out, fmt.Sprintf("%s %d/%d", typ, busy[typ], total[typ]))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ", ")
}

func counts[K ~string](m map[K]int) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			out = append(out, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
