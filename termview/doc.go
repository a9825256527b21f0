// Package termview builds the table the tcpstate command shows from a
// collector snapshot: each documented state's sockets and oldest age, the
// transitions and stays seen since the view started, and who holds CLOSE_WAIT.
package termview
