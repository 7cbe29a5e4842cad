// Package machine runs User-Mode Linux instances under umlkit: each one
// has a state directory, a small supervisor process that owns the kernel,
// its console (a pty, logged and attachable) and its notify socket, and
// control operations (start, list, stop, kill, hot-plug) that work by the
// instance's name.
package machine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"github.com/umlkit/umlkit/internal/hostdirs"
)

// Errors callers branch on.
var (
	// ErrNotFound: no instance of that name.
	ErrNotFound = errors.New("no such instance")
	// ErrAlreadyStarted: an instance of that name is running.
	ErrAlreadyStarted = errors.New("instance already running")
)

// Status of an instance.
type Status string

const (
	Starting Status = "starting" // supervisor up, kernel starting
	Booting  Status = "booting"  // the kernel's mconsole answers
	Running  Status = "running"  // the guest said it is ready
	Exited   Status = "exited"   // the kernel exited (see ExitCode)
	Crashed  Status = "crashed"  // the kernel panicked or was killed
)

// Spec is what an instance was started with.
type Spec struct {
	Name    string    `json:"name"`
	Args    []string  `json:"args"` // the kernel command line, as run
	Dir     string    `json:"dir"`  // the kernel's working directory
	Created time.Time `json:"created"`
	// Agent: the supervisor connects serial line AgentLine for the guest's
	// exec agent (umlkit vm exec).
	Agent bool `json:"agent"`
}

// AgentLine is the serial line (sslN, /dev/ttySN in the guest) the exec
// agent uses.
const AgentLine = 63

// State is what the supervisor reports.
type State struct {
	Status     Status    `json:"status"`
	PID        int       `json:"pid,omitempty"`        // the kernel's main process
	Supervisor int       `json:"supervisor,omitempty"` // the supervisor process
	Started    time.Time `json:"started,omitempty"`
	Ready      time.Time `json:"ready,omitempty"`
	Ended      time.Time `json:"ended,omitempty"`
	ExitCode   int       `json:"exit_code,omitempty"`
	Panic      string    `json:"panic,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Live reports whether the instance is (still) up.
func (s State) Live() bool { return s.Status == Starting || s.Status == Booting || s.Status == Running }

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$`)

// CheckName validates an instance name (it is also the umid).
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("instance name %q: use 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// Root is where instance state lives: $UMLKIT_RUNTIME_DIR/vm.
func Root() string { return filepath.Join(hostdirs.Runtime(), "vm") }

// UMLDir is the uml_dir umlkit gives its kernels (with a trailing '/').
func UMLDir() string { return filepath.Join(hostdirs.Runtime(), "uml") + "/" }

// Paths of one instance's files.
type Paths struct{ Dir string }

// PathsOf returns the paths of the instance name.
func PathsOf(name string) Paths { return Paths{Dir: filepath.Join(Root(), name)} }

func (p Paths) Spec() string    { return filepath.Join(p.Dir, "spec.json") }
func (p Paths) State() string   { return filepath.Join(p.Dir, "state.json") }
func (p Paths) Console() string { return filepath.Join(p.Dir, "console.sock") }
func (p Paths) Log() string     { return filepath.Join(p.Dir, "console.log") }
func (p Paths) Notify() string  { return filepath.Join(p.Dir, "notify.sock") }
func (p Paths) Agent() string   { return filepath.Join(p.Dir, "agent.sock") }
func (p Paths) SupLog() string  { return filepath.Join(p.Dir, "supervisor.log") }
func (p Paths) Mconsole(name string) string {
	return filepath.Join(UMLDir(), name, "mconsole")
}

// writeJSON writes v to path through a temporary file and a rename.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// Instance is an instance as List and Get see it.
type Instance struct {
	Spec  Spec  `json:"spec"`
	State State `json:"state"`
}

// Get reads the instance name's spec and state. A state that says the
// instance is up while its supervisor is gone is reported as Crashed.
func Get(name string) (*Instance, error) {
	p := PathsOf(name)
	var in Instance
	if err := readJSON(p.Spec(), &in.Spec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("instance %s: %w (umlkit vm list shows the instances)", name, ErrNotFound)
		}
		return nil, fmt.Errorf("instance %s: %w", name, err)
	}
	if err := readJSON(p.State(), &in.State); err != nil {
		in.State = State{Status: Starting}
	}
	if in.State.Live() && in.State.Supervisor > 0 && !alive(in.State.Supervisor) {
		in.State.Status = Crashed
		in.State.Error = "the supervisor died"
	}
	return &in, nil
}

// List returns every instance with state, sorted by name.
func List() ([]Instance, error) {
	entries, err := os.ReadDir(Root())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []Instance
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if in, err := Get(e.Name()); err == nil {
			out = append(out, *in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out, nil
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
