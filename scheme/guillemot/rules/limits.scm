;;; (guillemot rules limits) — connections and messages per client per time.
;;;
;;; One client should not take the whole server.  This module counts, per
;;; client, the connections it opens and the messages it sends in a time
;;; window, and defers what goes over:
;;;
;;;   (use-modules (guillemot rules limits))
;;;   (limits #:window 60 #:max-connections-per-window 30
;;;           #:max-messages-per-window 100)
;;;
;;; Windows are fixed: a client's window starts with the first connection
;;; (or message) counted, lasts #:window seconds, and the next one starts
;;; with the next connection after it.  Counters live in this process and
;;; are removed once their window is over.  An IPv6 client is counted with
;;; its whole /64 (#:ipv6-prefix), since one host usually has one.

(define-module (guillemot rules limits)
  #:use-module (srfi srfi-9)
  #:use-module (ice-9 match)
  #:use-module ((guillemot) #:select (rule next defer client-address))
  #:use-module (guillemot rules common)
  #:export (limits))


;;; Counters: KEY -> (WINDOW-START . COUNT), for windows of WINDOW seconds.

(define-record-type <counters>
  (%make-counters table window clock last-prune)
  counters?
  (table counters-table)
  (window counters-window)
  (clock counters-clock)
  (last-prune counters-last-prune set-counters-last-prune!))

(define (make-counters window clock)
  "A table of counters by key, each reset WINDOW seconds after it started
by CLOCK."
  (%make-counters (make-hash-table) window clock (clock)))

(define (prune! c now)
  ;; At most once a window: forget the counters whose window is over.
  (when (>= (- now (counters-last-prune c)) (counters-window c))
    (set-counters-last-prune! c now)
    (let* ((table (counters-table c))
           (window (counters-window c))
           (over (hash-fold (lambda (key value acc)
                              (if (>= (- now (car value)) window) (cons key acc) acc))
                            '() table)))
      (for-each (lambda (key) (hash-remove! table key)) over))))

(define (counters-size c)
  "How many keys C holds (expired ones included until they are pruned)."
  (hash-count (const #t) (counters-table c)))

(define (counter-ref c key)
  "How many times KEY was counted in its current window (0 when none)."
  (let ((now ((counters-clock c))))
    (match (hash-ref (counters-table c) key)
      ((start . n) (if (< (- now start) (counters-window c)) n 0))
      (#f 0))))

(define (counter-add! c key)
  "Count KEY once more and return its count in the current window."
  (let* ((now ((counters-clock c)))
         (table (counters-table c)))
    (prune! c now)
    (match (hash-ref table key)
      ((and counter (start . n))
       (if (< (- now start) (counters-window c))
           (begin (set-cdr! counter (1+ n)) (1+ n))
           (begin (hash-set! table key (cons now 1)) 1)))
      (#f (hash-set! table key (cons now 1)) 1))))


;;; The rules.

(define (limit? x) (or (not x) (positive-integer? x)))

(define-rules (limits
               (window 60)
               (max-connections-per-window 30)
               (max-messages-per-window 100)
               (exempt-networks '())
               (ipv4-prefix 32)
               (ipv6-prefix 64)
               (clock default-clock))
  "Add the connect rule @code{\"limits connections\"}: a client that opens
more than @var{max-connections-per-window} connections within
@var{window} seconds gets @samp{450 4.7.1 Too many connections from
[@var{ip}], try again later} (and the connection is closed); and the mail
and data rules @code{\"limits messages\"}: once a client has sent
@var{max-messages-per-window} messages within @var{window} seconds, its
next MAIL (or a message already under way) gets @samp{450 4.7.1 Too many
messages from [@var{ip}], try again later}.  A limit of @code{#f} adds no
rule.  Clients are counted by their address's first @var{ipv4-prefix} or
@var{ipv6-prefix} bits; those in @var{exempt-networks} are not counted.
@var{clock}, a procedure of no argument returning seconds, tells the time."
  (check-argument 'limits #:window window positive-real? "a number of seconds, more than 0")
  (check-argument 'limits #:max-connections-per-window max-connections-per-window limit?
                  "a number of connections, 1 or more, or #f for no limit")
  (check-argument 'limits #:max-messages-per-window max-messages-per-window limit?
                  "a number of messages, 1 or more, or #f for no limit")
  (check-argument 'limits #:ipv4-prefix ipv4-prefix (lambda (x) (and (exact-integer? x) (<= 0 x 32)))
                  "a prefix length from 0 to 32")
  (check-argument 'limits #:ipv6-prefix ipv6-prefix (lambda (x) (and (exact-integer? x) (<= 0 x 128)))
                  "a prefix length from 0 to 128")
  (check-argument 'limits #:clock clock (procedure-taking? 0)
                  "a procedure of no argument returning seconds")
  (let ((exempt (parse-networks 'limits #:exempt-networks exempt-networks)))
    (define (key-of s)
      (let ((ip (client-address s)))
        (and (not (client-in? ip exempt))
             (client-network ip ipv4-prefix ipv6-prefix))))

    (when max-connections-per-window
      (let ((connections (make-counters window clock)))
        (rule connect "limits connections"
          (lambda (s)
            (let ((key (key-of s)))
              (if (and key (> (counter-add! connections key) max-connections-per-window))
                  (defer 450 (format #f "4.7.1 Too many connections from [~a], try again later"
                                     (client-address s)))
                  (next)))))))

    (when max-messages-per-window
      (let ((messages (make-counters window clock)))
        (define (too-many s)
          (defer 450 (format #f "4.7.1 Too many messages from [~a], try again later"
                             (client-address s))))
        ;; Refuse MAIL once the count is reached, before the message is sent...
        (rule mail "limits messages"
          (lambda (s sender)
            (let ((key (key-of s)))
              (if (and key (>= (counter-ref messages key) max-messages-per-window))
                  (too-many s)
                  (next)))))
        ;; ... and count each message that arrives; several connections of
        ;; one client may have passed MAIL together.
        (rule data "limits messages"
          (lambda (s msg)
            (let ((key (key-of s)))
              (cond ((not key) (next))
                    ((>= (counter-ref messages key) max-messages-per-window) (too-many s))
                    (else (counter-add! messages key) (next))))))))))
