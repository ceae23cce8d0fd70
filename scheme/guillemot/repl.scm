;;; (guillemot repl) — the administrator's REPL inside the running server.
;;;
;;; The server listens on STATE-DIR/control/repl.sock with Guile's
;;; cooperative REPL server: a thread of its own reads what is typed, and the
;;; server's main thread evaluates it between two events of its main loop
;;; (a GLib timer polls every 50 ms).  So an expression sees the live
;;; sessions, the rules and the settings without locks, and while it runs no
;;; session moves: keep what you type short.
;;;
;;; A REPL starts in the module (guillemot live), which sees (guillemot),
;;; this module and (ice-9 pretty-print).  There (rule STAGE NAME PROC) is
;;; live-rule: it changes the rules of sessions that start from then on.

(define-module (guillemot repl)
  #:use-module (guillemot)
  #:use-module (ice-9 ftw)
  #:use-module (ice-9 match)
  #:use-module (ice-9 q)
  #:use-module (ice-9 threads)
  #:use-module (srfi srfi-1)
  #:use-module (system repl coop-server)
  #:export (reload!
            rules
            sessions
            queue
            live-rule
            drop-rule))

;; The C primitives are in (guillemot core), defined by the server when it
;; starts; look them up when called, so that this module compiles without it.
(define (core name)
  (module-ref (resolve-interface '(guillemot core)) name))

;; Rules are (guillemot)'s records.
(define rule-stage (@@ (guillemot) rule-stage))
(define rule-name (@@ (guillemot) rule-name))
(define rule-where (@@ (guillemot) rule-where))

(define (reload!)
  "Load the configuration file again, as SIGHUP and @command{guillemot
reload} do.  Return @code{#t} when it loaded: sessions that start from now
on get its rules, sessions in progress keep theirs.  Otherwise return the
error message, @code{\"FILE:LINE:COLUMN: ...\"}: nothing changed.  A setting
that needs a restart (listen, state-dir, workers, the dns- resolver
settings) keeps its running value; a warning saying so is printed."
  (match ((core '%control-reload))
    ((#t report . warnings)
     (for-each (lambda (w) (display w) (newline)) warnings)
     #t)
    ((#f message) message)))

(define (rules)
  "The rules sessions starting now get, in order: a list of
@code{(STAGE NAME WHERE)}, WHERE being @code{\"FILE:LINE\"} for a rule of the
configuration file and @code{\"REPL\"} for one added by @code{live-rule}."
  (map (lambda (r) (list (rule-stage r) (rule-name r) (rule-where r)))
       ((core '%control-rules))))

(define (sessions)
  "The live SMTP sessions, oldest first: for each an association list with
@code{client-address}, @code{client-port}, @code{local-address},
@code{local-port}, @code{helo} (@code{#f} before HELO or EHLO), @code{esmtp},
@code{sender} (@code{#f} outside a transaction), @code{recipients},
@code{queue-id} (once DATA starts), @code{state} (@code{idle},
@code{transaction}, @code{data}, @code{busy} while its rules or the spool
write run, @code{closing}), @code{connected} and @code{idle} (seconds)."
  ((core '%control-sessions)))

(define (queue)
  "The ids of the messages waiting in the queue (@file{spool/queue/}), oldest
first."
  (or (scandir (string-append ((core '%state-dir)) "/spool/queue")
               (lambda (name) (not (string-prefix? "." name)))
               string<?)
      '()))

(define (checked-rule stage name proc)
  ;; A rule record, checked as (rule ...) in a file checks it: add-rule!
  ;; collects into (guillemot)'s rules, so lend it an empty list meanwhile.
  (let ((collected (module-variable (resolve-module '(guillemot)) 'rules))
        (saved #f))
    (dynamic-wind
      (lambda ()
        (set! saved (variable-ref collected))
        (variable-set! collected '()))
      (lambda ()
        (catch 'config-error
          (lambda ()
            ((@@ (guillemot) add-rule!) stage name proc "REPL")
            (car (variable-ref collected)))
          (lambda (key message)
            (error message))))
      (lambda ()
        (variable-set! collected saved)))))

(define (same-rule? stage name)
  (lambda (r) (and (eq? (rule-stage r) stage) (equal? (rule-name r) name))))

(define (live-rule stage name proc)
  "Give sessions that start from now on the rule NAME at STAGE: it replaces
the rule of that stage and name, in place, or comes after the others.
Sessions in progress keep their rules.  Returns @code{added} or
@code{replaced}.  The change lasts until the next reload, which takes the
file's rules: write it into the file too.  In the REPL, @code{(rule STAGE
NAME PROC)} does the same.  STAGE is a symbol here; the checks of
@code{rule} apply, and a mistake is an error that changes nothing."
  (let* ((new (checked-rule stage name proc))
         (current ((core '%control-rules)))
         (old (find (same-rule? stage name) current)))
    ((core '%control-install-rules!)
     (if old
         (map (lambda (r) (if (eq? r old) new r)) current)
         (append current (list new))))
    (if old 'replaced 'added)))

(define (drop-rule stage name)
  "Take the rule NAME of STAGE out of the rules sessions starting from now
on get (until the next reload).  Returns @code{#t}, or @code{#f} when there
is no such rule."
  (let* ((current ((core '%control-rules)))
         (old (find (same-rule? stage name) current)))
    (and old
         (begin
           ((core '%control-install-rules!) (delete old current eq?))
           #t))))

;; (rule STAGE NAME PROC) in the REPL: live-rule, with the file's checks of
;; literal reply codes.
(define-syntax live-rule-form
  (syntax-rules ()
    ((_ stage name proc)
     (begin
       (catch 'config-error
         (lambda () ((@@ (guillemot) check-literal-verdicts) 'stage name 'proc))
         (lambda (key message) (error message)))
       (live-rule 'stage name proc)))))


;;;
;;; The server's side (called from src/control.c).
;;;

(define live-module
  ;; Where each REPL starts: what a configuration file sees, plus this module.
  (let ((m (resolve-module '(guillemot live) #f)))
    (beautify-user-module! m)
    (module-use-interfaces! m (list (resolve-interface '(guillemot) #:hide '(rule))
                                    (resolve-interface '(guillemot repl))
                                    (resolve-interface '(ice-9 pretty-print))))
    (module-add! m 'rule (module-variable (current-module) 'live-rule-form))
    m))

;; Each REPL has a thread reading for it (coop-server's reader-loop).  When
;; the REPL ends, that thread stays blocked, waiting to be asked for the
;; next expression: nobody will ask.  Remember which thread reads for which
;; client, and cancel it once the client's socket is closed.  This looks at
;; the coop server's queue, an internal of (system repl coop-server): if it
;; changes shape, the threads are merely left alone, as without this.
(define readers '())                    ; ((THREAD . CLIENT-PORT) ...)

(define (client-about-to-start server)
  ;; The client socket of the REPL the next poll starts, or #f.
  (false-if-exception
   (let ((mutex ((@@ (system repl coop-server) coop-repl-server-mutex) server))
         (queue ((@@ (system repl coop-server) coop-repl-server-queue) server)))
     (with-mutex mutex
       (and (not (q-empty? queue))
            (match (q-front queue)
              (('new-repl client) client)
              (_ #f)))))))

(define (reap-readers!)
  (set! readers
        (remove (match-lambda
                  ((thread . client)
                   (and (port-closed? client)
                        (begin (false-if-exception (cancel-thread thread)) #t))))
                readers)))

(define repl-server #f)

(define (%start-repl-server socket)
  "Serve REPLs on SOCKET, a listening Unix socket port."
  (set! repl-server (spawn-coop-repl-server socket)))

(define (%poll-repl)
  "Do what the REPLs wait for: start one, or evaluate one expression."
  (when repl-server
    (let* ((client (client-about-to-start repl-server))
           (before (and client (all-threads))))
      (save-module-excursion
       (lambda ()
         ;; A REPL starts in the current module of the poll.
         (set-current-module live-module)
         (poll-coop-repl-server repl-server)))
      (when client
        (for-each (lambda (thread) (set! readers (acons thread client readers)))
                  (lset-difference eq? (all-threads) before)))
      (reap-readers!))))
