package main

import "reflect"

// newOf: a pointer to a new value of the driver's scan type, for rows.Scan.
func newOf(t reflect.Type) any { return reflect.New(t).Interface() }

// deref: the value a pointer from newOf holds.
func deref(p any) any { return reflect.ValueOf(p).Elem().Interface() }
