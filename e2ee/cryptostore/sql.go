package cryptostore

import (
	"strconv"
	"sync"

	"go.mau.fi/util/dbutil"
)

// iterate scans each row with scan and hands it to each, closing the rows whatever happens.
func iterate[T any](rows dbutil.Rows, err error, scan dbutil.ConvertRowFn[T], each func(T) error) error {
	return dbutil.NewRowIterWithError(rows, scan, err).Iter(func(item T) (bool, error) {
		if err := each(item); err != nil {
			return false, err
		}
		return true, nil
	})
}

// placeholderList returns "$first,…,$(first+n-1)", with mark for '$'.
func placeholderList(first, n int, mark byte) string {
	return string(appendPlaceholders(make([]byte, 0, n*5), first, n, mark))
}

func appendPlaceholders(buf []byte, first, n int, mark byte) []byte {
	for i := range n {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, mark)
		buf = strconv.AppendInt(buf, int64(first+i), 10)
	}
	return buf
}

var placeholderCache sync.Map // placeholderShape → string

type placeholderShape struct {
	rows, cols, first int
	mark              byte
}

// placeholderRowsFrom returns "($first,…),(…)" for rows rows of cols placeholders, numbered on
// from first, with mark for '$'; built once per shape.
func placeholderRowsFrom(rows, cols, first int, mark byte) string {
	key := placeholderShape{rows, cols, first, mark}
	if cached, ok := placeholderCache.Load(key); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, rows*cols*6)
	for r := range rows {
		if r > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '(')
		buf = appendPlaceholders(buf, first+r*cols, cols, mark)
		buf = append(buf, ')')
	}
	placeholderCache.Store(key, string(buf))
	return string(buf)
}
