package cryptostore

import (
	"context"
	"strconv"
	"strings"
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

// addTo is an each of iterate that adds every row to set.
func addTo[T comparable](set map[T]bool) func(T) error {
	return func(v T) error {
		set[v] = true
		return nil
	}
}

// inList stands in a queryIn statement for the placeholders of one chunk of its keys.
const inList = "\x00in\x00"

// queryIn runs query once per chunk of at most heldLookupChunk keys, with the chunk's
// placeholders (numbered after fixed, the arguments before them) in place of inList, and hands
// each row to each.
func queryIn[K, T any](ctx context.Context, db *dbutil.Database, query string, fixed []any, keys []K, scan dbutil.ConvertRowFn[T], each func(T) error) error {
	for start := 0; start < len(keys); start += heldLookupChunk {
		chunk := keys[start:min(start+heldLookupChunk, len(keys))]
		args := make([]any, 0, len(fixed)+len(chunk))
		args = append(args, fixed...)
		for _, k := range chunk {
			args = append(args, k)
		}
		rows, err := db.Query(ctx, strings.Replace(query, inList, placeholderList(len(fixed)+1, len(chunk), '$'), 1), args...)
		if err := iterate(rows, err, scan, each); err != nil {
			return err
		}
	}
	return nil
}

// queryMap is queryIn into a map: scan reads a row's key and value.
func queryMap[K any, MK comparable, V any](ctx context.Context, db *dbutil.Database, query string, fixed []any, keys []K, scan func(dbutil.Scannable) (MK, V, error)) (map[MK]V, error) {
	type entry struct {
		key   MK
		value V
	}
	out := make(map[MK]V, len(keys))
	err := queryIn(ctx, db, query, fixed, keys, func(row dbutil.Scannable) (e entry, err error) {
		e.key, e.value, err = scan(row)
		return
	}, func(e entry) error {
		out[e.key] = e.value
		return nil
	})
	return out, err
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
