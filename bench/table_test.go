package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// table lays out a printed result table: a left-aligned name column, then
// right-aligned cells of the given widths.
type table struct {
	sb     strings.Builder
	nameW  int
	widths []int
}

// row prints one line; it may have fewer cells than the table has columns.
func (t *table) row(name string, cells ...string) {
	fmt.Fprintf(&t.sb, "%-*s", t.nameW, name)
	for i, c := range cells {
		fmt.Fprintf(&t.sb, " %*s", t.widths[i], c)
	}
	t.sb.WriteByte('\n')
}

// text prints a line of free text under (or over) the rows.
func (t *table) text(format string, args ...any) { fmt.Fprintf(&t.sb, format+"\n", args...) }

func (t *table) String() string { return t.sb.String() }

// num formats v with prec decimals, as %.<prec>f does.
func num(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
