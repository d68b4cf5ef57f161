package model

// FuzzSnapshot is fuzzSnapshot for the external tests of this directory.
var FuzzSnapshot = fuzzSnapshot
