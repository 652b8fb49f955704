package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// executionTypeFormat is the seed's format for execution types.
var executionTypeFormat = regexp.MustCompile(`\A([a-z0-9])+(-[a-z0-9]+)*\z`)

// Messages kept word for word from the seed, which clients may match on.
const (
	msgBlank              = "can't be blank"
	msgExecutionType      = "only allows lowercase letters, numbers and hyphen symbol"
	msgStorageMounts      = "Storage mounts are invalid"
	msgHostnameTaken      = "is already taken"
	maxExecutionTypeBytes = 63
)

// fields is a decoded JSON object whose values are decoded on demand.
type fields map[string]json.RawMessage

// parseObject decodes a request body that must be a JSON object and unwraps
// it from its root key (e.g. {"task": {...}}) when the client sent it
// wrapped, as Rails' wrap_parameters lets the seed's clients do.
func parseObject(body []byte, root string) (fields, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errorf(http.StatusBadRequest, "the request body is empty; send a JSON object")
	}
	var f fields
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&f); err != nil {
		return nil, errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
	if dec.More() {
		return nil, errorf(http.StatusBadRequest, "malformed JSON: trailing data after the object")
	}
	if f == nil {
		return nil, errorf(http.StatusBadRequest, "the request body must be a JSON object")
	}
	if raw, ok := f[root]; ok && len(bytes.TrimSpace(raw)) > 0 && bytes.TrimSpace(raw)[0] == '{' {
		var inner fields
		if err := json.Unmarshal(raw, &inner); err != nil {
			return nil, errorf(http.StatusBadRequest, "malformed JSON in %q: %v", root, err)
		}
		return inner, nil
	}
	return f, nil
}

// str returns a string field; absent and null are "".
func (f fields) str(name string, errs validationError) string {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		errs.add(name, "must be a string")
		return ""
	}
	return s
}

// required returns a string field that must not be blank.
func (f fields) required(name string, errs validationError) string {
	s := f.str(name, errs)
	if strings.TrimSpace(s) == "" && len(errs[name]) == 0 {
		errs.add(name, msgBlank)
	}
	return s
}

// boolean accepts true/false, 1/0 and their string forms, as Rails does.
func (f fields) boolean(name string, errs validationError) bool {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return false
	}
	var v any
	_ = json.Unmarshal(raw, &v)
	switch v := v.(type) {
	case bool:
		return v
	case float64:
		if v == 0 || v == 1 {
			return v == 1
		}
	case string:
		switch strings.ToLower(v) {
		case "true", "1", "t", "yes", "on":
			return true
		case "false", "0", "f", "no", "off", "":
			return false
		}
	}
	errs.add(name, "must be true or false")
	return false
}

// number returns a field that must be a number (or a numeric string, as
// form bodies send); ok is false when it is absent or wrong.
func (f fields) number(name string, errs validationError) (float64, bool) {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return 0, false
	}
	var v any
	_ = json.Unmarshal(raw, &v)
	switch v := v.(type) {
	case float64:
		return v, true
	case string:
		if n, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && !math.IsNaN(n) && !math.IsInf(n, 0) {
			return n, true
		}
	}
	errs.add(name, "must be a number")
	return 0, false
}

// object returns a field that must be a JSON object, or nil when absent.
func (f fields) object(name string, errs validationError) fields {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return nil
	}
	var obj fields
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		errs.add(name, "must be an object")
		return nil
	}
	return obj
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// sortedKeys returns an object's keys in order, for stable messages.
func (f fields) sortedKeys() []string {
	return slices.Sorted(maps.Keys(f))
}

// checkExecutionType adds the seed's messages for a bad execution type.
func checkExecutionType(field, typ string, errs validationError) {
	if !executionTypeFormat.MatchString(typ) || len(typ) > maxExecutionTypeBytes {
		errs.add(field, msgExecutionType)
	}
}

// taskRequest is a validated POST /tasks body.
type taskRequest struct {
	Name          string
	Image         string
	Cmd           string
	ExecutionType string
	StorageMounts map[string]string
	Tags          map[string]string
	PersistLogs   bool
	// MaxRetries is nil when the body has none (the broker's default).
	MaxRetries *int
	// Timeout bounds one attempt; zero means the broker's default.
	Timeout time.Duration
	// CallbackURL receives the task's outcome events; "" for none.
	CallbackURL string
}

// Limits of the broker's own task fields.
const (
	maxMaxRetries = 100
	maxTimeout    = 7 * 24 * time.Hour
)

// parseTaskRequest validates a POST /tasks body. mounts are the storage
// mount names the operator configured.
func parseTaskRequest(body []byte, mounts map[string]string) (taskRequest, error) {
	f, err := parseObject(body, "task")
	if err != nil {
		return taskRequest{}, err
	}
	errs := validationError{}
	req := taskRequest{
		Name:        f.required("name", errs),
		Image:       f.required("image", errs),
		Cmd:         f.required("cmd", errs),
		PersistLogs: f.boolean("persist_logs", errs),
	}
	if req.Image != "" && strings.ContainsAny(req.Image, " \t\r\n") {
		errs.add("image", "is invalid: an image reference has no whitespace")
	}
	raw := f.str("execution_type", errs)
	if len(errs["execution_type"]) == 0 {
		if raw == "" {
			errs.add("execution_type", msgBlank)
		}
		checkExecutionType("execution_type", raw, errs)
	}
	req.ExecutionType = raw
	req.StorageMounts = parseMounts(f.object("storage_mounts", errs), mounts, errs)
	req.Tags = parseTags(f.object("tags", errs), errs)
	if n, ok := f.number("max_retries", errs); ok {
		if n != float64(int(n)) || n < 0 || n > maxMaxRetries {
			errs.add("max_retries", fmt.Sprintf("must be a whole number from 0 to %d", maxMaxRetries))
		} else {
			r := int(n)
			req.MaxRetries = &r
		}
	}
	if n, ok := f.number("timeout", errs); ok {
		if n <= 0 || n > maxTimeout.Seconds() {
			errs.add("timeout", fmt.Sprintf("must be a number of seconds above 0 and at most %d", int(maxTimeout.Seconds())))
		} else {
			req.Timeout = time.Duration(n * float64(time.Second))
		}
	}
	req.CallbackURL = f.str("callback_url", errs)
	if req.CallbackURL != "" {
		if msg := checkCallbackURL(req.CallbackURL); msg != "" {
			errs.add("callback_url", msg)
		}
	}
	if len(errs) > 0 {
		return taskRequest{}, errs
	}
	return req, nil
}

// maxCallbackURL is the longest callback URL accepted, in bytes.
const maxCallbackURL = 2048

// checkCallbackURL returns what is wrong with a callback URL, or "": it must
// be an absolute http or https URL with a host, without whitespace, control
// characters or a fragment, at most maxCallbackURL bytes.
func checkCallbackURL(s string) string {
	const msg = "must be an absolute http or https URL"
	if len(s) > maxCallbackURL {
		return fmt.Sprintf("is too long (at most %d characters)", maxCallbackURL)
	}
	if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return msg + " without whitespace or control characters"
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Opaque != "" {
		return msg
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return msg + " (bad port " + strconv.Quote(p) + ")"
		}
	}
	if u.Fragment != "" || strings.HasSuffix(s, "#") {
		return msg + " without a fragment"
	}
	return ""
}

// parseMounts checks {"<mount name>": "<absolute path in the container>"}:
// a task names mounts the operator configured, never a host path.
func parseMounts(obj fields, allowed map[string]string, errs validationError) map[string]string {
	if len(obj) == 0 {
		return nil
	}
	out := make(map[string]string, len(obj))
	for _, name := range obj.sortedKeys() {
		var path string
		if err := json.Unmarshal(obj[name], &path); err != nil {
			errs.add("storage_mounts", msgStorageMounts+": the container path of "+strconv.Quote(name)+" must be a string")
			continue
		}
		if _, ok := allowed[name]; !ok {
			errs.add("storage_mounts", msgStorageMounts+": unknown mount "+strconv.Quote(name)+knownMounts(allowed))
			continue
		}
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, ":\x00") {
			errs.add("storage_mounts", msgStorageMounts+": the container path of "+strconv.Quote(name)+" must be absolute and have no ':'")
			continue
		}
		out[name] = path
	}
	return out
}

func knownMounts(allowed map[string]string) string {
	if len(allowed) == 0 {
		return " (no storage mounts are configured)"
	}
	names := slices.Sorted(maps.Keys(allowed))
	for i, n := range names {
		names[i] = strconv.Quote(n)
	}
	return " (configured: " + strings.Join(names, ", ") + ")"
}

// parseTags stores every tag value as a string, as the seed does.
func parseTags(obj fields, errs validationError) map[string]string {
	if len(obj) == 0 {
		return nil
	}
	out := make(map[string]string, len(obj))
	for _, k := range obj.sortedKeys() {
		raw := bytes.TrimSpace(obj[k])
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			errs.add("tags", "value of "+strconv.Quote(k)+" is invalid")
			continue
		}
		switch v := v.(type) {
		case string:
			out[k] = v
		case nil:
			out[k] = ""
		case bool, float64:
			out[k] = string(raw)
		default:
			errs.add("tags", "value of "+strconv.Quote(k)+" must be a string, a number or a boolean")
		}
	}
	return out
}

// nodeRequest is a validated POST /nodes body, or PATCH/PUT body (whose
// hostname is ignored).
type nodeRequest struct {
	Hostname string
	Slots    map[string]int
	// Mounts is nil when the body has no storage_mounts.
	Mounts map[string]string
}

// parseNodeRequest validates a POST /nodes body.
func parseNodeRequest(body []byte, checkHostname func(string) error) (nodeRequest, error) {
	f, err := parseObject(body, "node")
	if err != nil {
		return nodeRequest{}, err
	}
	errs := validationError{}
	req := nodeRequest{Hostname: f.required("hostname", errs)}
	if req.Hostname != "" && len(errs["hostname"]) == 0 {
		if err := checkHostname(req.Hostname); err != nil {
			errs.add("hostname", "is invalid: "+err.Error())
		}
	}
	req.Slots = parseSlots(f.object("slots_execution_types", errs), errs)
	req.Mounts = parseNodeMounts(f, errs)
	if len(errs) > 0 {
		return nodeRequest{}, errs
	}
	return req, nil
}

// parseNodeUpdate validates a PATCH/PUT /nodes/:uuid body: the slot map,
// and the node's storage mounts if given; hostname is ignored, as in the
// seed.
func parseNodeUpdate(body []byte) (nodeRequest, error) {
	f, err := parseObject(body, "node")
	if err != nil {
		return nodeRequest{}, err
	}
	errs := validationError{}
	req := nodeRequest{Slots: parseSlots(f.object("slots_execution_types", errs), errs), Mounts: parseNodeMounts(f, errs)}
	if len(errs) > 0 {
		return nodeRequest{}, errs
	}
	return req, nil
}

// mountNameFormat is what a storage mount name may look like.
var mountNameFormat = regexp.MustCompile(`\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\z`)

// parseNodeMounts checks a node's own {"<mount name>": "<absolute host
// path>"}; nil when the body has none.
func parseNodeMounts(f fields, errs validationError) map[string]string {
	const field = "storage_mounts"
	raw, ok := f[field]
	if !ok || isNull(raw) {
		return nil
	}
	obj := f.object(field, errs)
	out := make(map[string]string, len(obj))
	for _, name := range obj.sortedKeys() {
		var path string
		err := json.Unmarshal(obj[name], &path)
		switch {
		case !mountNameFormat.MatchString(name):
			errs.add(field, "mount name "+strconv.Quote(name)+" may have letters, digits, '_', '.' and '-'")
		case err != nil || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, ":\x00"):
			errs.add(field, "the host path of "+strconv.Quote(name)+" must be an absolute path without ':'")
		default:
			out[name] = path
		}
	}
	return out
}

// parseSlots checks {"<execution type>": <count>}; counts may be numbers or
// numeric strings (the seed's form parameters send strings).
func parseSlots(obj fields, errs validationError) map[string]int {
	const field = "slots_execution_types"
	if len(obj) == 0 {
		if len(errs[field]) == 0 {
			errs.add(field, msgBlank)
		}
		return nil
	}
	out := make(map[string]int, len(obj))
	for _, typ := range obj.sortedKeys() {
		checkExecutionType(field, typ, errs)
		var v any
		_ = json.Unmarshal(obj[typ], &v)
		n, ok := slotCount(v)
		if !ok {
			errs.add(field, "slot count of "+strconv.Quote(typ)+" must be a whole number from 0 to 10000")
			continue
		}
		out[typ] = n
	}
	return out
}

func slotCount(v any) (int, bool) {
	var f float64
	switch v := v.(type) {
	case float64:
		f = v
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, false
		}
		f = float64(n)
	default:
		return 0, false
	}
	if f != float64(int(f)) || f < 0 || f > 10000 {
		return 0, false
	}
	return int(f), true
}
