// Package lint holds tests of the repository's own rules, such as every
// package having exactly one package comment.
package lint
