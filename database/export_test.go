package database

// BulkCacheKiB is bulkCacheKiB, for the tests.
var BulkCacheKiB = bulkCacheKiB
