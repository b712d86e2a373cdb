// Package keybundle provides MSC4268 room key bundles: the history flag rules, building
// and validating bundles, their wire types, and the attachment encryption around them.
// The core is pure and testable without a network; fetching and sending sit at the edge.
package keybundle
