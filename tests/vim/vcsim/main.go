// A vCenter simulator for the VMware driver's tests: govmomi's simulator (the
// same code as its vcsim command) with the inventory of a small vCenter, a
// login that refuses a wrong password, optional HTTPS with the test's own
// certificate, and a control endpoint through which a test makes vCenter fail
// the way a real one does.
//
// Faults: POST /esc-test/faults with a JSON body
//
//	{"method": "CloneVM_Task", "fault": "InsufficientResourcesFault",
//	 "message": "...", "times": 1}
//
// makes the next `times` calls of that method (any method when empty) start a
// task that fails with that vim fault and message, as vCenter reports a
// refusal it finds while running the task; {"method": ..., "status": 503}
// answers the SOAP call with that HTTP status instead, as a proxy or a
// restarting vCenter does. DELETE /esc-test/faults clears them.
//
// With -guest-tools (or after PUT /esc-test/guest-tools {"running": true}) a VM
// powered on reports VMware Tools running, as a guest with tools does.
//
// Once listening it prints one JSON line, {"url": ..., "pid": ...}, on stdout.
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type fault struct {
	Method  string `json:"method"`
	Fault   string `json:"fault"`
	Message string `json:"message"`
	Status  int    `json:"status"`
	Times   int    `json:"times"`
}

type faults struct {
	mu      sync.Mutex
	pending []*fault
}

// due takes one use of the first fault pending for method, if any.
func (f *faults) due(method string) *fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.pending {
		if p.Method == "" || p.Method == method {
			p.Times--
			if p.Times <= 0 {
				f.pending = append(f.pending[:i], f.pending[i+1:]...)
			}
			copy := *p
			return &copy
		}
	}
	return nil
}

func (f *faults) control(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodDelete:
		f.mu.Lock()
		f.pending = nil
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	case http.MethodGet:
		f.mu.Lock()
		defer f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(f.pending)
	case http.MethodPost:
		var p fault
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if p.Times <= 0 {
			p.Times = 1
		}
		if p.Status == 0 {
			if _, err := vimFault(p.Fault); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if !strings.HasSuffix(p.Method, "_Task") {
				http.Error(w, "a vim fault is injected into a *_Task method", http.StatusBadRequest)
				return
			}
		}
		f.mu.Lock()
		f.pending = append(f.pending, &p)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func vimFault(name string) (types.BaseMethodFault, error) {
	kind, ok := types.TypeFunc()(name)
	if ok {
		if fault, ok := reflect.New(kind).Interface().(types.BaseMethodFault); ok {
			return fault, nil
		}
	}
	return nil, fmt.Errorf("no vim fault type %q", name)
}

// soapCall reads the method name and its _this object from a SOAP request.
func soapCall(body []byte) (method string, this types.ManagedObjectReference) {
	decoder := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		token, err := decoder.Token()
		if err != nil {
			return method, this
		}
		start, ok := token.(xml.StartElement)
		if !ok {
			continue
		}
		switch {
		case start.Name.Local == "Body":
			inBody = true
		case inBody && method == "":
			method = start.Name.Local
		case method != "" && start.Name.Local == "_this":
			for _, attr := range start.Attr {
				if attr.Name.Local == "type" {
					this.Type = attr.Value
				}
			}
			var value string
			_ = decoder.DecodeElement(&value, &start)
			this.Value = value
			return method, this
		}
	}
}

const taskResponse = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
	`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ` +
	`xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">` +
	`<soapenv:Body><%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval>` +
	`</%sResponse></soapenv:Body></soapenv:Envelope>`

// refer fills the fault's empty object references (TaskInProgress.task, say) with
// the failing task's: a client reads a fault with an untyped reference as malformed.
func refer(fault types.BaseMethodFault, task types.ManagedObjectReference) {
	moref := reflect.TypeOf(task)
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		for i := 0; i < v.NumField(); i++ {
			field := v.Field(i)
			switch {
			case field.Type() == moref && field.Interface().(types.ManagedObjectReference).Type == "":
				field.Set(reflect.ValueOf(task))
			case field.Kind() == reflect.Struct:
				fill(field)
			}
		}
	}
	fill(reflect.ValueOf(fault).Elem())
}

// failedTask starts a task of `this` that fails as vCenter fails one: its
// info.error holds the fault, its localizedMessage the message.
func failedTask(method string, this types.ManagedObjectReference, p *fault) types.ManagedObjectReference {
	vimErr, _ := vimFault(p.Fault)
	task := simulator.CreateTask(this, strings.TrimSuffix(method, "_Task"),
		func(*simulator.Task) (types.AnyType, types.BaseMethodFault) { return nil, vimErr })
	refer(vimErr, task.Self)
	task.Run()
	message := p.Message
	if message == "" {
		message = p.Fault
	}
	simulator.Map.Update(task, []types.PropertyChange{{
		Name: "info.error",
		Val:  types.LocalizedMethodFault{Fault: vimErr, LocalizedMessage: message},
	}})
	return task.Self
}

func (f *faults) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := ioutil.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		method, this := soapCall(body)
		p := f.due(method)
		switch {
		case p == nil:
			next.ServeHTTP(w, r)
		case p.Status != 0:
			log.Printf("esc-test fault: %s answered HTTP %d", method, p.Status)
			http.Error(w, http.StatusText(p.Status), p.Status)
		default:
			log.Printf("esc-test fault: %s fails with %s", method, p.Fault)
			task := failedTask(method, this, p)
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			fmt.Fprintf(w, taskResponse, method, task.Value, method)
		}
	})
}

// guestTools makes every VM powered on while it is enabled report VMware Tools
// running, as a guest with tools does: vCenter then asks the guest to shut down.
type guestTools struct {
	mu      sync.Mutex
	enabled bool
}

func (g *guestTools) control(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Running bool `json:"running"`
	}
	if r.Method != http.MethodPut {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	g.enabled = body.Running
	g.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (*guestTools) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "EscTestGuestTools", Value: "guest-tools"}
}
func (*guestTools) PutObject(mo.Reference)                    {}
func (*guestTools) RemoveObject(types.ManagedObjectReference) {}

func (g *guestTools) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	g.mu.Lock()
	enabled := g.enabled
	g.mu.Unlock()
	for _, change := range changes {
		if change.Name != "runtime.powerState" {
			continue
		}
		// Tools stop with the guest whatever the setting; they start only while enabled.
		tools, guest := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, "notRunning"
		if change.Val == types.VirtualMachinePowerStatePoweredOn {
			if !enabled {
				continue
			}
			tools, guest = types.VirtualMachineToolsRunningStatusGuestToolsRunning, "running"
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.toolsRunningStatus", Val: string(tools)},
			{Name: "guest.guestState", Val: guest},
		})
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve the SDK on")
	username := flag.String("username", "user", "the one user name Login accepts")
	password := flag.String("password", "pass", "its password")
	certFile := flag.String("tls-cert", "", "PEM certificate to serve HTTPS with (empty: HTTP)")
	keyFile := flag.String("tls-key", "", "its PEM private key")
	datastores := flag.Int("datastores", 1, "datastores of the datacenter")
	tools := flag.Bool("guest-tools", false, "powered-on VMs report VMware Tools running")
	flag.Parse()

	model := simulator.VPX()
	model.Datastore = *datastores
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	guest := &guestTools{enabled: *tools}
	simulator.Map.AddHandler(guest)

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	injected := &faults{}
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.HandleFunc("/esc-test/faults", injected.control)
	model.Service.ServeMux.HandleFunc("/esc-test/guest-tools", guest.control)
	server := model.Service.NewServer()
	// NewServer has started serving already; no client knows the address until the line
	// below is printed, so the handler is swapped before any request can read it.
	server.Config.Handler = injected.wrap(server.Config.Handler)
	defer server.Close()

	address := *server.URL
	address.User = nil
	ready, _ := json.Marshal(map[string]interface{}{"url": address.String(), "pid": os.Getpid()})
	fmt.Println(string(ready))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
