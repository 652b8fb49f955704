package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"
)

// requestBody returns a request's body as JSON. Form bodies
// (application/x-www-form-urlencoded or multipart/form-data), which the
// seed's Rails controllers accepted as task[name]=...&task[tags][type]=...,
// are turned into the equivalent JSON object first.
func requestBody(c echo.Context) ([]byte, error) {
	ct := c.Request().Header.Get(echo.HeaderContentType)
	if !strings.HasPrefix(ct, echo.MIMEApplicationForm) && !strings.HasPrefix(ct, echo.MIMEMultipartForm) {
		return readBody(c)
	}
	values, err := c.FormParams()
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "malformed form body: %v", err)
	}
	obj, err := formObject(values)
	if err != nil {
		return nil, err
	}
	return json.Marshal(obj)
}

// formObject nests Rails-style form keys: a[b][c]=v → {"a": {"b": {"c": "v"}}}.
func formObject(values url.Values) (map[string]any, error) {
	root := map[string]any{}
	for key, vs := range values {
		path, ok := formPath(key)
		if !ok {
			return nil, errorf(http.StatusBadRequest, "malformed form key %q", key)
		}
		node := root
		for _, p := range path[:len(path)-1] {
			child, ok := node[p].(map[string]any)
			if !ok {
				if _, taken := node[p]; taken {
					return nil, errorf(http.StatusBadRequest, "form key %q is both a value and an object", key)
				}
				child = map[string]any{}
				node[p] = child
			}
			node = child
		}
		leaf := path[len(path)-1]
		if _, taken := node[leaf]; taken {
			return nil, errorf(http.StatusBadRequest, "form key %q is both a value and an object", key)
		}
		node[leaf] = vs[len(vs)-1]
	}
	return root, nil
}

// formPath splits "a[b][c]" into [a b c].
func formPath(key string) ([]string, bool) {
	head, rest, nested := strings.Cut(key, "[")
	if head == "" {
		return nil, false
	}
	path := []string{head}
	if !nested {
		return path, true
	}
	rest = "[" + rest
	for rest != "" {
		if !strings.HasPrefix(rest, "[") {
			return nil, false
		}
		end := strings.Index(rest, "]")
		if end <= 1 || len(path) > 4 {
			return nil, false
		}
		path = append(path, rest[1:end])
		rest = rest[end+1:]
	}
	return path, true
}
