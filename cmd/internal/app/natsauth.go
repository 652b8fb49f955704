package app

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// The users of nats.conf and where their passwords come from.
const (
	// BrokerUser is the user the broker logs in as: every right.
	BrokerUser = "broker"
	// SubscriberUser is the read-only user for event subscribers.
	SubscriberUser = "subscriber"
	// VarBrokerPassword and VarSubscriberPassword are the variables
	// nats.conf takes the two passwords from. In embedded mode the broker
	// sets them while it reads the file.
	VarBrokerPassword     = "BROKER_NATS_PASSWORD"
	VarSubscriberPassword = "BROKER_NATS_SUBSCRIBER_PASSWORD"
	// SubscriberPasswordFile, in the data directory, keeps the subscriber
	// password generated on the first start of an embedded server.
	SubscriberPasswordFile = "subscriber.password"
)

// configEnv guards the process environment while a nats.conf is read. The
// server's parser looks up a variable the file does not define in the
// environment, and that is the only way to hand it a value without
// rewriting the file (which would break its relative includes).
var configEnv sync.Mutex

// processNATSConfig reads the embedded server's configuration, the file at
// path or the built-in one, with the variables set for the time of the
// parse.
func processNATSConfig(opts *server.Options, path string, vars map[string]string) error {
	configEnv.Lock()
	defer configEnv.Unlock()
	for name, value := range vars {
		if strings.ContainsAny(value, "\"\\\n\r") {
			return fmt.Errorf("%s: a NATS password may not contain quotes, backslashes or line breaks", name)
		}
		old, had := os.LookupEnv(name)
		// The parser reads the value as configuration text: quoted, it is
		// always a string.
		if err := os.Setenv(name, `"`+value+`"`); err != nil {
			return err
		}
		defer func() {
			if had {
				_ = os.Setenv(name, old)
			} else {
				_ = os.Unsetenv(name)
			}
		}()
	}
	if path != "" {
		if err := opts.ProcessConfigFile(path); err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		return nil
	}
	if err := opts.ProcessConfigString(DefaultNATSConfig); err != nil {
		return fmt.Errorf("built-in nats.conf: %w", err)
	}
	return nil
}

// embeddedVars returns the values of nats.conf's password variables: the
// configured ones, else a random broker password for this process and the
// subscriber password kept in the data directory.
func (a *App) embeddedVars() (map[string]string, error) {
	subscriber, err := a.subscriberPassword()
	if err != nil {
		return nil, err
	}
	return map[string]string{
		VarBrokerPassword:     cmp.Or(a.cfg.NATSPassword, rand.Text()),
		VarSubscriberPassword: subscriber,
	}, nil
}

// subscriberPassword returns the configured subscriber password, or the one
// in the data directory, creating it (mode 0600) on first use.
func (a *App) subscriberPassword() (string, error) {
	if a.cfg.SubscriberPassword != "" {
		return a.cfg.SubscriberPassword, nil
	}
	path := filepath.Join(a.cfg.DataDir, SubscriberPasswordFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if pw := strings.TrimSpace(string(b)); pw != "" {
			return pw, nil
		}
		return "", fmt.Errorf("%s is empty", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the subscriber password: %w", err)
	}
	if err := os.MkdirAll(a.cfg.DataDir, 0o750); err != nil {
		return "", fmt.Errorf("creating the data directory: %w", err)
	}
	pw := rand.Text()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("creating the subscriber password: %w", err)
	}
	_, err = f.WriteString(pw + "\n")
	err = errors.Join(err, f.Sync(), f.Close())
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return pw, nil
}

// embeddedLogin returns how the broker logs in to its embedded server: as
// the broker user with the password the configuration ended up with (the
// variable's, unless the file gives its own), as the one user of a
// single-user configuration, with its token, or not at all when the
// configuration asks for no authentication.
func embeddedLogin(opts *server.Options, vars map[string]string) (nats.Option, error) {
	switch {
	case len(opts.Users) > 0:
		for _, u := range opts.Users {
			if u.Username != BrokerUser {
				continue
			}
			password := u.Password
			if strings.HasPrefix(password, "$2") { // a bcrypt hash: only the variable can be the clear text
				password = vars[VarBrokerPassword]
			}
			return nats.UserInfo(BrokerUser, password), nil
		}
		return nil, fmt.Errorf("the NATS configuration has users, but none named %q for the broker", BrokerUser)
	case opts.Username != "":
		return nats.UserInfo(opts.Username, opts.Password), nil
	case opts.Authorization != "":
		return nats.Token(opts.Authorization), nil
	case len(opts.Nkeys) > 0 || len(opts.TrustedOperators) > 0:
		return nil, errors.New("the embedded NATS server's configuration uses nkeys or JWTs; run it as an external server (--nats-url)")
	}
	return nil, nil
}

// hasUser reports whether the configuration defines a user.
func hasUser(opts *server.Options, name string) bool {
	for _, u := range opts.Users {
		if u.Username == name {
			return true
		}
	}
	return false
}

// externalLogin returns the options to log in to an external server.
func (c Config) externalLogin() []nats.Option {
	switch {
	case c.NATSCreds != "":
		return []nats.Option{nats.UserCredentials(c.NATSCreds)}
	case c.NATSUser != "" || c.NATSPassword != "":
		return []nats.Option{nats.UserInfo(cmp.Or(c.NATSUser, BrokerUser), c.NATSPassword)}
	}
	return nil
}

// redactURLs hides the passwords of a comma-separated URL list, for logs
// and errors.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, ok := u.User.Password(); !ok {
				u.User = url.User("xxxxx") // a token
			}
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
