package events

import "strings"

// SubjectPrefix is the first two tokens of every event subject.
const SubjectPrefix = "cb.ev"

// Subject returns the subject of an event: cb.ev.<aggregate>.<id>.<name>,
// e.g. cb.ev.task.<task id>.completed. Subscribers filter on it server-side,
// e.g. cb.ev.task.*.completed.
func Subject(t Type, aggregateID string) string {
	return SubjectPrefix + "." + t.Aggregate() + "." + aggregateID + "." + t.Name()
}

// AggregateSubjects returns the filter matching every event of one aggregate.
func AggregateSubjects(aggregate, id string) string {
	return SubjectPrefix + "." + aggregate + "." + id + ".*"
}

// AllSubjects is the filter matching every event.
const AllSubjects = SubjectPrefix + ".>"

// validToken reports whether s can be one subject token: non-empty, no dots,
// wildcards or whitespace.
func validToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	return !strings.ContainsAny(s, ".*> \t\r\n\x00")
}
