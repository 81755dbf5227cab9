package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestReadmeSession replays the README's curl session ("A FREE user, to
// the 429 and back") against a freshly started app, with the real curl,
// and compares every command's output with the README's, once the values
// that change from run to run (dates, seconds until the reset, the month's
// length) are masked.
func TestReadmeSession(t *testing.T) {
	for _, tool := range []string{"curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed, and CI is set: the README session must be replayed in CI", tool)
			}
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := sessionSteps(t, string(readme), "## A FREE user, to the 429 and back")
	if len(steps) < 10 {
		t.Fatalf("found %d commands in the README session; want the whole walk", len(steps))
	}

	ctx, cancel := context.WithCancel(t.Context())
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-addr", "127.0.0.1:0", "-db", filepath.Join(t.TempDir(), "saas.db"), "-postgres", ""}, func(a net.Addr) { addrc <- a })
	}()
	var addr string
	select {
	case a := <-addrc:
		addr = a.String()
	case err := <-errc:
		t.Fatalf("run = %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the app did not start within 30 s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("run = %v", err)
		}
	})

	dir := t.TempDir()
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, "bash", "-c", strings.ReplaceAll(s.command, "localhost:8080", addr))
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", s.command, err)
		}
		if got, want := mask(string(out)), mask(s.output); got != want {
			t.Errorf("%s\ngot:\n%s\nwant (README):\n%s", s.command, got, want)
		}
	}
}

type sessionStep struct{ command, output string }

// sessionSteps returns the commands of the console blocks of one README
// section, each with the output the README shows for it.
func sessionSteps(t *testing.T, readme, heading string) []sessionStep {
	t.Helper()
	_, section, ok := strings.Cut(readme, heading+"\n")
	if !ok {
		t.Fatalf("README has no section %q", heading)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var steps []sessionStep
	for _, block := range strings.Split(section, "```console\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		for _, line := range strings.SplitAfter(block, "\n") {
			if cmd, ok := strings.CutPrefix(line, "$ "); ok {
				steps = append(steps, sessionStep{command: strings.TrimSuffix(cmd, "\n")})
				continue
			}
			if len(steps) == 0 {
				t.Fatalf("README output before any command: %q", line)
			}
			steps[len(steps)-1].output += line
		}
	}
	return steps
}

// volatile matches what changes from run to run, as the README lists it.
var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`(?m)^Date: .*$`), "Date: <date>"},
	{regexp.MustCompile(`"(created_at|at|reset_at)": ?"[^"]*"`), `"$1": "<time>"`},
	{regexp.MustCompile(`;t=\d+`), ";t=<seconds>"},
	{regexp.MustCompile(`;w=\d+`), ";w=<seconds>"},
	// A 429 in the last hour of the month says when to retry; the
	// README's, earlier in the month, does not.
	{regexp.MustCompile(`(?m)^Retry-After: \d+\r?\n`), ""},
}

func mask(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return strings.TrimRight(s, "\n")
}
