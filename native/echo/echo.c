// SPDX-License-Identifier: Apache-2.0
/*
 * meshctl-echo: the lab pod's workload, in C so that a pod costs a few hundred KB instead of a
 * ~45 MB Node process. It speaks exactly the protocol of src/lab/echo.ts (the reference the
 * tests compare it with, byte for byte):
 *
 *   HTTP 8080  any method, any path: 200, headers `content-type: application/json`,
 *              `content-length`, `Date`, `Connection` (+ `Keep-Alive: timeout=5`), body
 *              {"cluster","node","namespace","pod","podIP","path","method","clientIP","clientPort"}
 *              with Node's HTTP/1.1 rules for keep-alive, HEAD, Expect, Host and bad requests
 *   TCP 9000   greets with "<cluster>/<node>/<namespace>/<pod>\n", then echoes every byte;
 *              closes once the client has closed and everything is echoed
 *   UDP 9001   answers each datagram with the identity line followed by the datagram
 *
 * usage: meshctl-echo CLUSTER NODE NAMESPACE POD POD_IP
 *          [--http-port N] [--tcp-port N] [--udp-port N] [--ready-file PATH]
 *
 * One thread, one epoll loop, no allocation per UDP datagram. The ready file (written
 * atomically once all three sockets listen) lets the lab wait for a pod without polling `ss`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADER_BYTES 16384 /* Node's --max-http-header-size default */
#define KEEP_ALIVE_MS 5000     /* Node's server.keepAliveTimeout default */
#define HEADERS_TIMEOUT_MS 60000
#define READ_CHUNK 65536
#define UDP_MAX 65536

enum kind { K_HTTP_LISTEN = 1, K_TCP_LISTEN, K_UDP, K_HTTP, K_TCP };

/* How the body of the request being read is framed. */
enum body { B_NONE, B_LENGTH, B_CHUNK_SIZE, B_CHUNK_DATA, B_CHUNK_CRLF, B_TRAILER };

struct conn {
	int fd;
	enum kind kind;
	struct sockaddr_in peer;
	char *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_len, out_off, out_cap;
	int peer_closed;  /* read EOF */
	int close_after;  /* close once out is written */
	int reading;      /* EPOLLIN wanted */
	enum body body;
	uint64_t body_left;
	int64_t deadline; /* ms, monotonic; 0 = none */
};

static char identity[1024];
static size_t identity_len;
static const char *id_cluster, *id_node, *id_namespace, *id_pod, *id_ip;
static int epfd;
static struct conn **conns;
static int conns_cap;

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("meshctl-echo: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (!q)
		die("out of memory");
	return q;
}

static void reserve(char **buf, size_t *cap, size_t need)
{
	if (need <= *cap)
		return;
	size_t n = *cap ? *cap : 512;
	while (n < need)
		n *= 2;
	*buf = xrealloc(*buf, n);
	*cap = n;
}

static void out_append(struct conn *c, const char *data, size_t len)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	reserve(&c->out, &c->out_cap, c->out_len + len);
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
}

static void out_printf(struct conn *c, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		out_append(c, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A JSON string as JSON.stringify writes it (UTF-8 passes through; control bytes escaped). */
static void json_string(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	reserve(buf, cap, *len + n * 6 + 2);
	char *p = *buf + *len;
	*p++ = '"';
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		switch (ch) {
		case '"': *p++ = '\\'; *p++ = '"'; break;
		case '\\': *p++ = '\\'; *p++ = '\\'; break;
		case '\b': *p++ = '\\'; *p++ = 'b'; break;
		case '\f': *p++ = '\\'; *p++ = 'f'; break;
		case '\n': *p++ = '\\'; *p++ = 'n'; break;
		case '\r': *p++ = '\\'; *p++ = 'r'; break;
		case '\t': *p++ = '\\'; *p++ = 't'; break;
		default:
			if (ch < 0x20)
				p += sprintf(p, "\\u%04x", ch);
			else
				*p++ = (char)ch;
		}
	}
	*p++ = '"';
	*len = (size_t)(p - *buf);
}

static void json_field(char **buf, size_t *len, size_t *cap, const char *key, const char *s, size_t n)
{
	size_t k = strlen(key);
	reserve(buf, cap, *len + k + 4);
	char sep = *len > 0 ? ',' : '{';
	(*buf)[(*len)++] = sep;
	json_string(buf, len, cap, key, k);
	(*buf)[(*len)++] = ':';
	json_string(buf, len, cap, s, n);
}

static void conn_watch(struct conn *c)
{
	struct epoll_event ev = { .data.fd = c->fd };
	ev.events = (c->reading ? EPOLLIN : 0) | (c->out_len > c->out_off ? EPOLLOUT : 0);
	epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct conn *c)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	conns[c->fd] = NULL;
	free(c->in);
	free(c->out);
	free(c);
}

/* Write what is pending; returns 0 when the connection was closed. */
static int conn_flush(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			conn_close(c);
			return 0;
		}
		c->out_off += (size_t)n;
	}
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->close_after) {
			conn_close(c);
			return 0;
		}
	}
	return 1;
}

static void http_date(char *buf, size_t n)
{
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	snprintf(buf, n, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
		 tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* What llhttp reports as a parse error: Node answers this and closes. */
static void http_bad(struct conn *c, int code)
{
	if (code == 431)
		out_printf(c, "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n");
	else
		out_printf(c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
	c->close_after = 1;
	c->reading = 0;
}

/* A response Node's server writes itself (no user handler ran): status, Date, chunked empty body. */
static void http_empty(struct conn *c, const char *status, int keep)
{
	char date[64];
	http_date(date, sizeof(date));
	if (keep)
		out_printf(c, "HTTP/1.1 %s\r\nDate: %s\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status, date);
	else
		out_printf(c, "HTTP/1.1 %s\r\nConnection: close\r\nDate: %s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status, date);
}

static void http_answer(struct conn *c, const char *method, size_t mlen, const char *path, size_t plen, int head, int keep)
{
	char *body = NULL;
	size_t len = 0, cap = 0;
	char ip[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, &c->peer.sin_addr, ip, sizeof(ip));
	json_field(&body, &len, &cap, "cluster", id_cluster, strlen(id_cluster));
	json_field(&body, &len, &cap, "node", id_node, strlen(id_node));
	json_field(&body, &len, &cap, "namespace", id_namespace, strlen(id_namespace));
	json_field(&body, &len, &cap, "pod", id_pod, strlen(id_pod));
	json_field(&body, &len, &cap, "podIP", id_ip, strlen(id_ip));
	json_field(&body, &len, &cap, "path", path, plen);
	json_field(&body, &len, &cap, "method", method, mlen);
	json_field(&body, &len, &cap, "clientIP", ip, strlen(ip));
	reserve(&body, &cap, len + 32);
	len += (size_t)sprintf(body + len, ",\"clientPort\":%u}", ntohs(c->peer.sin_port));

	char date[64];
	http_date(date, sizeof(date));
	out_printf(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %zu\r\nDate: %s\r\n%s\r\n", len, date,
		   keep ? "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n" : "Connection: close\r\n");
	if (!head)
		out_append(c, body, len);
	free(body);
}

/* Methods llhttp knows (it refuses the rest). */
static int known_method(const char *m, size_t n)
{
	static const char *methods[] = {
		"DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
		"PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
		"CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR",
		"LINK", "UNLINK", "SOURCE", "QUERY", NULL,
	};
	for (int i = 0; methods[i]; i++)
		if (strlen(methods[i]) == n && memcmp(methods[i], m, n) == 0)
			return 1;
	return 0;
}

static int is_tchar(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || strchr("!#$%&'*+-.^_`|~", ch);
}

/* Does a comma-separated header value hold this token (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *tok)
{
	size_t t = strlen(tok), i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e - s == t && strncasecmp(v + s, tok, t) == 0)
			return 1;
	}
	return 0;
}

/*
 * Parse one request head at the start of c->in (len bytes, ending in CRLF CRLF) and answer it.
 * Returns 0 when the connection is done reading (bad request or no keep-alive).
 */
static int http_request(struct conn *c, const char *h, size_t len)
{
	const char *end = h + len;
	const char *eol = memmem(h, len, "\r\n", 2);
	const char *sp1 = memchr(h, ' ', (size_t)(eol - h));
	if (!sp1 || !known_method(h, (size_t)(sp1 - h)))
		return http_bad(c, 400), 0;
	const char *method = h;
	size_t mlen = (size_t)(sp1 - h);
	const char *path = sp1;
	while (path < eol && *path == ' ')
		path++; /* llhttp takes runs of spaces as one */
	const char *p = path;
	while (p < eol && *p != ' ') {
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
			return http_bad(c, 400), 0;
		p++;
	}
	size_t plen = (size_t)(p - path);
	if (plen == 0)
		return http_bad(c, 400), 0;
	int major = 0, minor = 9;
	while (p < eol - 9 && p[1] == ' ')
		p++;
	if (p < eol) {
		if (eol - p != 9 || memcmp(p, " HTTP/", 6) != 0 || p[6] < '0' || p[6] > '9' || p[7] != '.' || p[8] < '0' || p[8] > '9')
			return http_bad(c, 400), 0;
		major = p[6] - '0';
		minor = p[8] - '0';
	}

	int host = 0, conn_close_tok = 0, conn_keep_tok = 0, chunked = 0, other_coding = 0, have_len = 0, expect = 0, expect_continue = 0;
	uint64_t clen = 0;
	for (const char *line = eol + 2; line < end - 2;) {
		const char *le = memmem(line, (size_t)(end - line), "\r\n", 2);
		const char *colon = memchr(line, ':', (size_t)(le - line));
		if (!colon || colon == line)
			return http_bad(c, 400), 0;
		for (const char *q = line; q < colon; q++)
			if (!is_tchar((unsigned char)*q))
				return http_bad(c, 400), 0;
		size_t nlen = (size_t)(colon - line);
		const char *v = colon + 1;
		const char *ve = le;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		for (const char *q = v; q < ve; q++)
			if ((unsigned char)*q < 0x20 && *q != '\t')
				return http_bad(c, 400), 0;
		size_t vlen = (size_t)(ve - v);
		if (nlen == 4 && strncasecmp(line, "host", 4) == 0) {
			host = 1;
		} else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
			conn_close_tok |= has_token(v, vlen, "close");
			conn_keep_tok |= has_token(v, vlen, "keep-alive");
		} else if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
			if (have_len || vlen == 0)
				return http_bad(c, 400), 0;
			for (const char *q = v; q < ve; q++) {
				if (*q < '0' || *q > '9' || clen > UINT64_MAX / 10 - 10)
					return http_bad(c, 400), 0;
				clen = clen * 10 + (uint64_t)(*q - '0');
			}
			have_len = 1;
		} else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
			/* chunked must be the last coding */
			const char *last = v;
			for (const char *q = v; q < ve; q++)
				if (*q == ',')
					last = q + 1;
			while (last < ve && (*last == ' ' || *last == '\t'))
				last++;
			chunked = (size_t)(ve - last) == 7 && strncasecmp(last, "chunked", 7) == 0;
			other_coding = !chunked;
		} else if (nlen == 6 && strncasecmp(line, "expect", 6) == 0) {
			expect = 1;
			for (const char *q = v; q + 12 <= ve; q++)
				if (strncasecmp(q, "100-continue", 12) == 0 && (q == v || !isalnum((unsigned char)q[-1])) &&
				    (q + 12 == ve || !isalnum((unsigned char)q[12])))
					expect_continue = 1;
		}
		line = le + 2;
	}
	if (chunked && have_len)
		return http_bad(c, 400), 0;

	int keep = (major > 0 && minor > 0) ? !conn_close_tok : conn_keep_tok;
	c->body = chunked ? B_CHUNK_SIZE : (have_len && clen > 0) ? B_LENGTH : B_NONE;
	c->body_left = clen;
	int http11 = major == 1 && minor == 1;
	if (http11 && !host) {
		http_empty(c, "400 Bad Request", 0);
		c->close_after = 1;
		c->reading = 0;
		return 0;
	}
	if (http11 && expect) {
		if (!expect_continue) {
			http_empty(c, "417 Expectation Failed", keep);
			goto done;
		}
		out_printf(c, "HTTP/1.1 100 Continue\r\n\r\n");
	}
	http_answer(c, method, mlen, path, plen, mlen == 4 && memcmp(method, "HEAD", 4) == 0, keep);
done:
	/* A request body in another coding runs to EOF in llhttp, which then fails: Node closes. */
	if (!keep || other_coding) {
		c->close_after = 1;
		c->reading = 0;
		return 0;
	}
	return 1;
}

/* Skip request body bytes at the start of c->in; returns bytes consumed, or -1 on a framing error. */
static ssize_t http_body(struct conn *c, const char *d, size_t n)
{
	size_t used = 0;
	while (used < n && c->body != B_NONE) {
		const char *p = d + used;
		size_t left = n - used;
		switch (c->body) {
		case B_LENGTH:
		case B_CHUNK_DATA: {
			size_t take = left < c->body_left ? left : (size_t)c->body_left;
			used += take;
			c->body_left -= take;
			if (c->body_left == 0)
				c->body = c->body == B_LENGTH ? B_NONE : B_CHUNK_CRLF;
			break;
		}
		case B_CHUNK_CRLF:
			if (left < 2)
				return (ssize_t)used;
			if (p[0] != '\r' || p[1] != '\n')
				return -1;
			used += 2;
			c->body = B_CHUNK_SIZE;
			break;
		case B_CHUNK_SIZE: {
			const char *le = memmem(p, left, "\r\n", 2);
			if (!le)
				return left > 1024 ? -1 : (ssize_t)used;
			uint64_t size = 0;
			const char *q = p;
			int digits = 0;
			for (; q < le && *q != ';'; q++, digits++) {
				int v = (*q >= '0' && *q <= '9') ? *q - '0' : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10 : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10 : -1;
				if (v < 0 || size >> 59)
					return -1;
				size = size * 16 + (uint64_t)v;
			}
			if (digits == 0)
				return -1;
			used += (size_t)(le - p) + 2;
			c->body_left = size;
			c->body = size ? B_CHUNK_DATA : B_TRAILER;
			break;
		}
		case B_TRAILER: {
			const char *le = memmem(p, left, "\r\n", 2);
			if (!le)
				return left > MAX_HEADER_BYTES ? -1 : (ssize_t)used;
			used += (size_t)(le - p) + 2;
			if (le == p)
				c->body = B_NONE;
			break;
		}
		case B_NONE:
			break;
		}
	}
	return (ssize_t)used;
}

/* Consume whatever complete requests c->in holds; returns 0 when the connection was closed. */
static int http_process(struct conn *c)
{
	size_t off = 0;
	ssize_t first_end = -1;
	while (c->reading && off < c->in_len) {
		if (c->body != B_NONE) {
			ssize_t used = http_body(c, c->in + off, c->in_len - off);
			if (used < 0) {
				http_bad(c, 400);
				break;
			}
			off += (size_t)used;
			if (c->body != B_NONE)
				break;
			continue;
		}
		while (off + 1 < c->in_len && c->in[off] == '\r' && c->in[off + 1] == '\n')
			off += 2; /* empty lines before a request are allowed */
		const char *h = c->in + off;
		size_t avail = c->in_len - off;
		if (avail == 1 && *h == '\r')
			break;
		const char *term = memmem(h, avail, "\r\n\r\n", 4);
		size_t scan = term ? (size_t)(term - h) + 4 : avail;
		for (size_t i = 0; i < scan; i++) {
			if (h[i] == '\n' && (i == 0 || h[i - 1] != '\r')) {
				http_bad(c, 400); /* a bare LF */
				goto out;
			}
		}
		if (!term) {
			if (avail > MAX_HEADER_BYTES)
				http_bad(c, 431);
			break;
		}
		if (scan > MAX_HEADER_BYTES) {
			http_bad(c, 431);
			break;
		}
		off += scan;
		int ok = http_request(c, h, scan);
		if (first_end < 0)
			first_end = (ssize_t)c->out_len;
		if (!ok) {
			/* Bytes after a request that ends the connection make llhttp fail within the same
			 * read; Node then destroys the socket, and of this read's answers only the first,
			 * already written, goes out (the others wait for it to finish). */
			if (off < c->in_len && c->close_after && c->body == B_NONE) {
				c->out_len = (size_t)first_end;
				if (c->out_len == c->out_off) {
					conn_close(c);
					return 0;
				}
			}
			break;
		}
	}
out:
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	c->deadline = now_ms() + (c->in_len == 0 && c->body == B_NONE ? KEEP_ALIVE_MS : HEADERS_TIMEOUT_MS);
	return 1;
}

static void on_readable(struct conn *c)
{
	if (c->kind == K_TCP) {
		/* Echo: read only while nothing is waiting to be written (as a Node pipe pauses). */
		char buf[READ_CHUNK];
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				conn_close(c);
			return;
		}
		if (n == 0) {
			c->peer_closed = 1;
			c->close_after = 1;
			c->reading = 0;
		} else {
			out_append(c, buf, (size_t)n);
		}
		if (!conn_flush(c))
			return;
		c->reading = !c->peer_closed && c->out_len == 0;
		conn_watch(c);
		return;
	}
	reserve(&c->in, &c->in_cap, c->in_len + READ_CHUNK);
	ssize_t n = recv(c->fd, c->in + c->in_len, READ_CHUNK, 0);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			conn_close(c);
		return;
	}
	if (n == 0) {
		conn_close(c);
		return;
	}
	c->in_len += (size_t)n;
	if (!http_process(c) || !conn_flush(c))
		return;
	conn_watch(c);
}

static void on_writable(struct conn *c)
{
	if (!conn_flush(c))
		return;
	if (c->kind == K_TCP)
		c->reading = !c->peer_closed && c->out_len == 0;
	conn_watch(c);
}

static void track(struct conn *c)
{
	if (c->fd >= conns_cap) {
		int n = conns_cap ? conns_cap : 64;
		while (n <= c->fd)
			n *= 2;
		conns = xrealloc(conns, sizeof(*conns) * (size_t)n);
		memset(conns + conns_cap, 0, sizeof(*conns) * (size_t)(n - conns_cap));
		conns_cap = n;
	}
	conns[c->fd] = c;
}

static void on_accept(int lfd, enum kind kind)
{
	for (;;) {
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct conn *c = calloc(1, sizeof(*c));
		if (!c)
			die("out of memory");
		c->fd = fd;
		c->kind = kind;
		c->peer = peer;
		c->reading = 1;
		track(c);
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
		if (kind == K_TCP) {
			out_append(c, identity, identity_len);
			if (!conn_flush(c))
				continue;
			c->reading = c->out_len == 0;
			conn_watch(c);
		} else {
			c->deadline = now_ms() + HEADERS_TIMEOUT_MS;
		}
	}
}

static void on_datagram(int fd)
{
	static char buf[UDP_MAX + sizeof(identity)];
	memcpy(buf, identity, identity_len);
	for (;;) {
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		ssize_t n = recvfrom(fd, buf + identity_len, UDP_MAX, 0, (struct sockaddr *)&peer, &plen);
		if (n < 0)
			return;
		sendto(fd, buf, identity_len + (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&peer, plen);
	}
}

static int listen_on(int type, int port)
{
	int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind %s port %d: %s", type == SOCK_STREAM ? "tcp" : "udp", port, strerror(errno));
	if (type == SOCK_STREAM && listen(fd, 511) < 0)
		die("listen port %d: %s", port, strerror(errno));
	return fd;
}

static int parse_port(const char *flag, const char *v)
{
	char *end;
	long n = v ? strtol(v, &end, 10) : -1;
	if (!v || *end || n < 1 || n > 65535)
		die("invalid %s \"%s\": must be an integer from 1 to 65535", flag, v ? v : "");
	return (int)n;
}

static void write_ready(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, getpid());
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
		die("write ready file %s: %s", path, strerror(errno));
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	const char *pos[5];
	int npos = 0, http_port = 8080, tcp_port = 9000, udp_port = 9001;
	const char *ready = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--http-port") == 0)
			http_port = parse_port("--http-port", i + 1 < argc ? argv[++i] : NULL);
		else if (strcmp(argv[i], "--tcp-port") == 0)
			tcp_port = parse_port("--tcp-port", i + 1 < argc ? argv[++i] : NULL);
		else if (strcmp(argv[i], "--udp-port") == 0)
			udp_port = parse_port("--udp-port", i + 1 < argc ? argv[++i] : NULL);
		else if (strcmp(argv[i], "--ready-file") == 0)
			ready = i + 1 < argc ? argv[++i] : NULL;
		else if (npos < 5)
			pos[npos++] = argv[i];
		else
			npos = 6;
	}
	if (npos != 5) {
		fputs("usage: meshctl-echo CLUSTER NODE NAMESPACE POD POD_IP [--http-port N] [--tcp-port N] [--udp-port N] [--ready-file PATH]\n", stderr);
		return 2;
	}
	id_cluster = pos[0];
	id_node = pos[1];
	id_namespace = pos[2];
	id_pod = pos[3];
	id_ip = pos[4];
	int n = snprintf(identity, sizeof(identity), "%s/%s/%s/%s\n", id_cluster, id_node, id_namespace, id_pod);
	if (n < 0 || (size_t)n >= sizeof(identity))
		die("identity line longer than %zu bytes", sizeof(identity) - 1);
	identity_len = (size_t)n;

	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		die("epoll: %s", strerror(errno));
	int lh = listen_on(SOCK_STREAM, http_port), lt = listen_on(SOCK_STREAM, tcp_port), lu = listen_on(SOCK_DGRAM, udp_port);
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.fd = lh;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lh, &ev);
	ev.data.fd = lt;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lt, &ev);
	ev.data.fd = lu;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lu, &ev);
	fprintf(stderr, "echo %s/%s listening on %s\n", id_namespace, id_pod, id_ip);
	if (ready)
		write_ready(ready);

	struct epoll_event events[64];
	int64_t next_sweep = now_ms() + 1000;
	for (;;) {
		int k = epoll_wait(epfd, events, 64, 1000);
		for (int i = 0; i < k; i++) {
			int fd = events[i].data.fd;
			if (fd == lh) {
				on_accept(lh, K_HTTP);
			} else if (fd == lt) {
				on_accept(lt, K_TCP);
			} else if (fd == lu) {
				on_datagram(lu);
			} else if (fd < conns_cap && conns[fd]) {
				struct conn *c = conns[fd];
				if (events[i].events & (EPOLLERR | EPOLLHUP) && !(events[i].events & EPOLLIN)) {
					conn_close(c);
					continue;
				}
				if (events[i].events & EPOLLOUT) {
					on_writable(c);
					if (fd >= conns_cap || conns[fd] != c)
						continue;
				}
				if (events[i].events & EPOLLIN)
					on_readable(c);
			}
		}
		int64_t now = now_ms();
		if (now >= next_sweep) {
			next_sweep = now + 1000;
			for (int fd = 0; fd < conns_cap; fd++) {
				struct conn *c = conns[fd];
				if (c && c->kind == K_HTTP && c->deadline && now >= c->deadline && c->out_len == 0)
					conn_close(c);
			}
		}
	}
}
