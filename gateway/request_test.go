package gateway

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var testMounts = map[string]string{"shared": "/srv/shared", "tmp": "/tmp"}

func checkHost(h string) error {
	if h == "bad" {
		return errors.New("want tcp://host:port")
	}
	return nil
}

func TestParseTaskRequest(t *testing.T) {
	t.Parallel()
	ok := map[string]struct {
		body string
		want taskRequest
	}{
		"Flat": {
			body: `{"name":"encode","image":"busybox:1.36","cmd":"echo hi","execution_type":"cpu"}`,
			want: taskRequest{Name: "encode", Image: "busybox:1.36", Cmd: "echo hi", ExecutionType: "cpu"},
		},
		"Wrapped": {
			body: `{"task":{"name":"encode","image":"busybox","cmd":"echo hi","execution_type":"cpu-heavy","persist_logs":"true"}}`,
			want: taskRequest{Name: "encode", Image: "busybox", Cmd: "echo hi", ExecutionType: "cpu-heavy", PersistLogs: true},
		},
		"TagValuesBecomeStrings": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"io","tags":{"api_id":12345,"ok":true,"s":"x","none":null}}`,
			want: taskRequest{
				Name: "n", Image: "i", Cmd: "c", ExecutionType: "io",
				Tags: map[string]string{"api_id": "12345", "ok": "true", "s": "x", "none": ""},
			},
		},
		"ConfiguredMounts": {
			body: `{"name":"n","image":"registry.local:5000/team/app:1.2","cmd":"c","execution_type":"io","storage_mounts":{"shared":"/data"}}`,
			want: taskRequest{
				Name: "n", Image: "registry.local:5000/team/app:1.2", Cmd: "c", ExecutionType: "io",
				StorageMounts: map[string]string{"shared": "/data"},
			},
		},
		"RetriesAndTimeout": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"io","max_retries":0,"timeout":"1.5"}`,
			want: taskRequest{Name: "n", Image: "i", Cmd: "c", ExecutionType: "io", MaxRetries: new(0), Timeout: 1500 * time.Millisecond},
		},
		"CallbackURL": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"io","callback_url":"https://h.example:8443/cb?x=1"}`,
			want: taskRequest{Name: "n", Image: "i", Cmd: "c", ExecutionType: "io", CallbackURL: "https://h.example:8443/cb?x=1"},
		},
		"CallbackURLNull": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"io","callback_url":null}`,
			want: taskRequest{Name: "n", Image: "i", Cmd: "c", ExecutionType: "io"},
		},
		"UnknownFieldsAreIgnored": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"io","storage_mount":"/legacy","priority":3}`,
			want: taskRequest{Name: "n", Image: "i", Cmd: "c", ExecutionType: "io"},
		},
	}
	for name, tc := range ok {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := parseTaskRequest([]byte(tc.body), testMounts)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}

	invalid := map[string]struct {
		body string
		want validationError
	}{
		"Empty": {
			body: `{}`,
			want: validationError{"name": {msgBlank}, "image": {msgBlank}, "cmd": {msgBlank}, "execution_type": {msgBlank, msgExecutionType}},
		},
		"BadExecutionType": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"CPU_heavy"}`,
			want: validationError{"execution_type": {msgExecutionType}},
		},
		"WrongTypes": {
			body: `{"name":5,"image":["i"],"cmd":"c","execution_type":"cpu","persist_logs":"maybe","tags":[1]}`,
			want: validationError{"name": {"must be a string"}, "image": {"must be a string"}, "persist_logs": {"must be true or false"}, "tags": {"must be an object"}},
		},
		"UnknownMount": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","storage_mounts":{"nfs":"/data"}}`,
			want: validationError{"storage_mounts": {msgStorageMounts + `: unknown mount "nfs" (configured: "shared", "tmp")`}},
		},
		"HostPathInMount": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","storage_mounts":{"shared":"/etc:/data"}}`,
			want: validationError{"storage_mounts": {msgStorageMounts + `: the container path of "shared" must be absolute and have no ':'`}},
		},
		"NestedTag": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","tags":{"a":{"b":1}}}`,
			want: validationError{"tags": {`value of "a" must be a string, a number or a boolean`}},
		},
		"BadRetriesAndTimeout": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","max_retries":-1,"timeout":0}`,
			want: validationError{"max_retries": {"must be a whole number from 0 to 100"}, "timeout": {"must be a number of seconds above 0 and at most 604800"}},
		},
		"RetriesNotANumber": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","max_retries":"many"}`,
			want: validationError{"max_retries": {"must be a number"}},
		},
		"CallbackURLNotAString": {
			body: `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":42}`,
			want: validationError{"callback_url": {"must be a string"}},
		},
		"BlankStrings": {
			body: `{"name":"  ","image":"i i","cmd":"c","execution_type":"cpu"}`,
			want: validationError{"name": {msgBlank}, "image": {"is invalid: an image reference has no whitespace"}},
		},
	}
	for name, tc := range invalid {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := parseTaskRequest([]byte(tc.body), testMounts)
			var verr validationError
			require.ErrorAs(t, err, &verr)
			require.Equal(t, tc.want, verr)
		})
	}

	for name, body := range map[string]string{
		"NotJSON": `{"name":`, "Array": `[]`, "Null": `null`, "Nothing": ``, "Trailing": `{} {}`, "String": `"x"`, "BadWrapped": `{"task":{"name":}}`,
	} {
		t.Run("Malformed"+name, func(t *testing.T) {
			t.Parallel()
			_, err := parseTaskRequest([]byte(body), testMounts)
			var herr *httpError
			require.ErrorAs(t, err, &herr)
			require.Equal(t, http.StatusBadRequest, herr.status)
		})
	}
}

func TestCheckCallbackURL(t *testing.T) {
	t.Parallel()
	const msg = "must be an absolute http or https URL"
	for _, ok := range []string{
		"http://h", "https://hooks.example.com/cb", "http://127.0.0.1:8080/x?a=b&c=%20", "https://[::1]:443/", "HTTPS://H/",
		"https://user:pass@h/cb", "https://h/" + strings.Repeat("a", 2048-len("https://h/")),
	} {
		require.Empty(t, checkCallbackURL(ok), ok)
	}
	for bad, want := range map[string]string{
		"ftp://h/x":                              msg,
		"/relative":                              msg,
		"h/x":                                    msg,
		"//h/x":                                  msg,
		"http://":                                msg,
		"http:///x":                              msg,
		"http:h":                                 msg,
		"mailto:a@b":                             msg,
		"http://%zz/":                            msg,
		"javascript:alert":                       msg,
		"http://h:0/":                            msg + ` (bad port "0")`,
		"http://h:99999/":                        msg + ` (bad port "99999")`,
		"http://h/a b":                           msg + " without whitespace or control characters",
		" http://h/":                             msg + " without whitespace or control characters",
		"http://h/\x7f":                          msg + " without whitespace or control characters",
		"http://h/\n":                            msg + " without whitespace or control characters",
		"http://h/#frag":                         msg + " without a fragment",
		"http://h/#":                             msg + " without a fragment",
		"https://h/" + strings.Repeat("a", 2048): "is too long (at most 2048 characters)",
	} {
		require.Equal(t, want, checkCallbackURL(bad), bad)
	}
}

func TestParseNodeRequest(t *testing.T) {
	t.Parallel()
	got, err := parseNodeRequest([]byte(`{"node":{"hostname":"tcp://h:2375","slots_execution_types":{"cpu":"2","io":10}}}`), checkHost)
	require.NoError(t, err)
	require.Equal(t, nodeRequest{Hostname: "tcp://h:2375", Slots: map[string]int{"cpu": 2, "io": 10}}, got)

	cases := map[string]struct {
		body string
		want validationError
	}{
		"Blank":     {`{}`, validationError{"hostname": {msgBlank}, "slots_execution_types": {msgBlank}}},
		"EmptyHash": {`{"hostname":"tcp://h:1","slots_execution_types":{}}`, validationError{"slots_execution_types": {msgBlank}}},
		"BadHost":   {`{"hostname":"bad","slots_execution_types":{"cpu":1}}`, validationError{"hostname": {"is invalid: want tcp://host:port"}}},
		"BadTypes": {
			`{"hostname":"tcp://h:1","slots_execution_types":{"CPU":1,"io_x":2}}`,
			validationError{"slots_execution_types": {msgExecutionType}},
		},
		"BadCounts": {
			`{"hostname":"tcp://h:1","slots_execution_types":{"cpu":-1,"io":1.5,"net":"x"}}`,
			validationError{"slots_execution_types": {
				`slot count of "cpu" must be a whole number from 0 to 10000`,
				`slot count of "io" must be a whole number from 0 to 10000`,
				`slot count of "net" must be a whole number from 0 to 10000`,
			}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := parseNodeRequest([]byte(tc.body), checkHost)
			var verr validationError
			require.ErrorAs(t, err, &verr)
			require.Equal(t, tc.want, verr)
		})
	}
}

func TestValidUTF8(t *testing.T) {
	t.Parallel()
	require.Equal(t, "Abc?Teste", validUTF8([]byte("Abc\xCCTeste")))
	require.Equal(t, "ação", validUTF8([]byte("ação")))
	require.Equal(t, "??x", validUTF8([]byte("\xff\xfex")))
}

// FuzzParseTaskRequest checks that no body makes the parser panic, and that
// every body is either accepted whole or refused with a 400 or a 422.
func FuzzParseTaskRequest(f *testing.F) {
	f.Add([]byte(`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","tags":{"a":1},"storage_mounts":{"shared":"/x"}}`))
	f.Add([]byte(`{"task":{"name":"n","persist_logs":1}}`))
	f.Add([]byte(`{"task":null}`))
	f.Add([]byte(`[{"a":1}]`))
	f.Add([]byte(`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"https://h:8443/cb?t=1"}`))
	f.Add([]byte(`{"task":{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"ftp://h/x"}}`))
	f.Add([]byte(`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"http://h:99999/#x"}`))
	f.Add([]byte(`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"http://h/a\u0000b"}`))
	f.Add([]byte(`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":["http://h/"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseTaskRequest(body, testMounts)
		if err == nil {
			require.NotEmpty(t, req.Name)
			require.Regexp(t, executionTypeFormat, req.ExecutionType)
			for name := range req.StorageMounts {
				require.Contains(t, testMounts, name)
			}
			if req.CallbackURL != "" {
				u, err := url.Parse(req.CallbackURL)
				require.NoError(t, err)
				require.Contains(t, []string{"http", "https"}, u.Scheme)
				require.NotEmpty(t, u.Hostname())
				require.LessOrEqual(t, len(req.CallbackURL), maxCallbackURL)
			}
			return
		}
		var (
			verr validationError
			herr *httpError
		)
		if errors.As(err, &verr) {
			require.NotEmpty(t, verr)
			return
		}
		require.ErrorAs(t, err, &herr)
		require.Equal(t, http.StatusBadRequest, herr.status)
	})
}

func FuzzParseNodeRequest(f *testing.F) {
	f.Add([]byte(`{"hostname":"tcp://h:1","slots_execution_types":{"cpu":2}}`))
	f.Add([]byte(`{"node":{"slots_execution_types":{"cpu":"1e9"}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseNodeRequest(body, checkHost)
		if err == nil {
			require.NotEmpty(t, req.Slots)
			for typ, n := range req.Slots {
				require.Regexp(t, executionTypeFormat, typ)
				require.GreaterOrEqual(t, n, 0)
			}
			return
		}
		var (
			verr validationError
			herr *httpError
		)
		if !errors.As(err, &verr) {
			require.ErrorAs(t, err, &herr)
		}
	})
}

func TestFormObject(t *testing.T) {
	t.Parallel()
	obj, err := formObject(map[string][]string{
		"task[name]": {"n"}, "task[tags][type]": {"video"}, "task[storage_mounts][shared]": {"/data"}, "plain": {"x"},
	})
	require.NoError(t, err)
	require.Equal(t, map[string]any{
		"task":  map[string]any{"name": "n", "tags": map[string]any{"type": "video"}, "storage_mounts": map[string]any{"shared": "/data"}},
		"plain": "x",
	}, obj)
	for _, bad := range []map[string][]string{
		{"[x]": {"1"}}, {"a[": {"1"}}, {"a[]": {"1"}}, {"a[b]c": {"1"}}, {"a": {"1"}, "a[b]": {"2"}}, {"a[b][c][d][e][f]": {"1"}},
	} {
		_, err := formObject(bad)
		require.Error(t, err, bad)
	}
}
