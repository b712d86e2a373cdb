package server

// SendTxnID is sendTxnID, for the tests.
var SendTxnID = sendTxnID
