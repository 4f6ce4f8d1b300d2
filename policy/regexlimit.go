package policy

import (
	"fmt"
	"regexp/syntax"
)

// Limits on the regexes of L7 rules (HTTP method, path, host). They bound
// what one policy can make every proxy compile and run per request, and
// keep Envoy from rejecting what l7gate accepted: the Envoy bootstrap sets
// RE2's max_program_size to the same number of instructions
// (envoy/bootstrap MaxRegexProgramSize).
const (
	// MaxRegexLength bounds a regex's text, checked before parsing it.
	MaxRegexLength = 10000
	// MaxRegexProgram bounds the compiled program, in instructions.
	MaxRegexProgram = 10000
)

// checkRegexSize rejects a regex that is too long or compiles to too large
// a program, with an error that does not repeat the regex.
func checkRegexSize(expr string) error {
	if len(expr) > MaxRegexLength {
		return fmt.Errorf("regex of %d bytes is longer than l7gate's limit of %d", len(expr), MaxRegexLength)
	}
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil // compileAnchored reports syntax errors
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil
	}
	if n := len(prog.Inst); n > MaxRegexProgram {
		return fmt.Errorf("regex compiles to %d instructions, more than l7gate's limit of %d (simplify it, e.g. fewer or smaller repetitions)", n, MaxRegexProgram)
	}
	return nil
}
