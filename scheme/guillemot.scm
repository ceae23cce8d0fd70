;;; (guillemot) — what a configuration file sees.
;;;
;;; A configuration file is a Scheme program evaluated in a fresh module that
;;; already uses this one.  It declares the server with define-server, the
;;; domains delivered here with local-domains, and where their mail goes with
;;; deliver-local.

(define-module (guillemot)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (ice-9 match)
  #:use-module (ice-9 regex)
  #:use-module (guillemot address)
  #:use-module (guillemot mime)
  #:use-module (guillemot dns)
  #:re-export (address-local address-domain domain-matches? parse-cidr cidr? cidr->string
               address-in? address-in-any?
               message-parts message-parts-truncated? mime-part? part-content-type
               part-charset part-filename part-filenames part-disposition part-size part-body
               part-text part-attachment? attachment-filenames
               dns-lookup dns-reverse dns-error?)
  #:export (define-server
            local-domains
            deliver-local
            maildir
            mbox
            mailbox?
            mailbox-kind
            mailbox-template
            ;; Policy rules (stages connect, helo, auth, mail, rcpt, data, queued,
            ;; delivery); rule and
            ;; accept are in #:replace below.
            next reject defer discard quarantine
            set-sender! add-recipient! remove-recipient! deliver-to!
            verdict?
            client-address client-port local-address local-port
            helo-name esmtp? sender recipients queue-id message-size
            client-name tls? authenticated-user authenticated?
            session-ref session-set!
            header-ref header-add! header-remove! header-has? header-count header-set!
            header-rename!
            log-message
            suspend)
  ;; Guile's core has a socket procedure named accept: here it is the verdict.
  #:replace (accept rule pause))

;; The C primitives live in (guillemot core), created by the server before
;; any configuration is read; look them up when called, so that this module
;; also compiles without the server.
(define core-interface #f)              ; found once: rules call primitives often

(define (core name)
  (unless core-interface
    (set! core-interface (resolve-interface '(guillemot core))))
  (module-ref core-interface name))

(define (config-error message . args)
  (throw 'config-error (apply format #f message args)))

(define (define-server . options)
  "Declare the server's settings as keyword arguments, for example
@code{(define-server #:hostname \"mx.example.test\" #:listen '(\"127.0.0.1:25\"))}.
Every keyword is a setting of the settings table; unknown ones are errors."
  (let ((known ((core '%settings))))
    (let loop ((rest options))
      (cond ((null? rest) *unspecified*)
            ((not (keyword? (car rest)))
             (config-error "define-server: expected a keyword such as #:hostname, got ~s"
                           (car rest)))
            ((null? (cdr rest))
             (config-error "define-server: #:~a has no value" (keyword->symbol (car rest))))
            (else
             (let ((name (keyword->symbol (car rest))))
               (unless (memq name known)
                 (config-error "define-server: unknown setting #:~a (known: ~a)"
                               name
                               (string-join (map symbol->string known) ", ")))
               ((core '%server-set!) name (cadr rest))
               (loop (cddr rest))))))))

(define (local-domains . domains)
  "Declare the domains whose mail is delivered on this machine, as strings
or one list of strings: @code{(local-domains \"example.test\" \"localhost\")}.
Mail for any other domain is refused with 554 5.7.1."
  (let ((flat (if (and (= (length domains) 1) (list? (car domains)))
                  (car domains)
                  domains)))
    (for-each (lambda (d)
                (unless (and (string? d) (positive? (string-length d)))
                  (config-error "local-domains: expected domain names as strings, got ~s" d)))
              flat)
    ((core '%set-local-domains!) flat)))

(define-record-type <mailbox>
  (make-mailbox kind template)
  mailbox?
  (kind mailbox-kind)
  (template mailbox-template))

(define (check-template who template)
  (unless (and (string? template) (positive? (string-length template)))
    (config-error "~a: expected a path template string such as \"mail/~~a/Maildir\", got ~s"
                  who template)))

(define (maildir template)
  "A Maildir for each recipient: in TEMPLATE, @code{~a} stands for the local
part (lower-cased).  A relative path is under the state directory."
  (check-template 'maildir template)
  (make-mailbox 'maildir template))

(define (mbox template)
  "An mbox file for each recipient: in TEMPLATE, @code{~a} stands for the
local part (lower-cased).  A relative path is under the state directory."
  (check-template 'mbox template)
  (make-mailbox 'mbox template))

(define (deliver-local mailbox)
  "Deliver mail for the local domains into MAILBOX, made by @code{maildir} or
@code{mbox}: @code{(deliver-local (maildir \"mail/~a/Maildir\"))}."
  (unless (mailbox? mailbox)
    (config-error "deliver-local: expected (maildir TEMPLATE) or (mbox TEMPLATE), got ~s"
                  mailbox))
  ((core '%set-local-delivery!) (mailbox-kind mailbox) (mailbox-template mailbox)))


;;;
;;; Policy rules.
;;;
;;; (rule STAGE NAME PROC) attaches PROC to STAGE.  The rules of a stage run
;;; in file order; the first verdict other than (next) decides.  A rule that
;;; raises an error, or returns something that is not a verdict, is logged
;;; with its name and where it was defined, and the client gets
;;; 451 4.3.0: mail is never accepted or dropped because a rule broke.

(define stage-arities
  ;; stage -> the arguments its procedures take
  ;; auth: (s user), run once AUTH exists (with STARTTLS); rules load now.
  ;; queued: (s msg), after the 250, once, before the first delivery attempt;
  ;; delivery: (s rcpt), for each recipient at each delivery attempt.
  '((connect . 1) (helo . 2) (auth . 2) (mail . 2) (rcpt . 2) (data . 2)
    (queued . 2) (delivery . 2)))

(define-record-type <rule>
  (make-rule stage name proc where)
  rule?
  (stage rule-stage)
  (name rule-name)
  (proc rule-proc)
  (where rule-where))

;; The rules of the configuration being loaded, in file order.  When the load
;; succeeds the server takes them (%loaded-rules) as the new rule set; each
;; session keeps the set it started with, so a reload never changes the rules
;; under a session in progress.
(define rules '())

(define (%reset-rules!)
  (set! rules '()))

(define (%loaded-rules)
  rules)

(define (%rule-stages rule-set)
  "The stages that have at least one rule in RULE-SET."
  (delete-duplicates (map rule-stage rule-set)))

(define (accepts-arguments? proc n)
  (match (procedure-minimum-arity proc)
    ((req opt rest?) (and (<= req n) (or rest? (>= (+ req opt) n))))
    (_ #t)))

(define (add-rule! stage name proc where)
  (let ((arity (assq-ref stage-arities stage)))
    (unless arity
      (config-error "rule: unknown stage ~a (known: ~a)" stage
                    (string-join (map (compose symbol->string car) stage-arities) ", ")))
    (unless (string? name)
      (config-error "rule ~a: the name must be a string, got ~s" stage name))
    (unless (procedure? proc)
      (config-error "rule ~a ~s: expected a procedure, got ~s" stage name proc))
    (unless (accepts-arguments? proc arity)
      (config-error "rule ~a ~s: the procedure must take ~a argument~a (~a)" stage name arity
                    (if (= arity 1) "" "s")
                    (if (= arity 1) "session" "session and the stage's value")))
    (set! rules (append rules (list (make-rule stage name proc where))))))

(define (check-literal-verdicts stage name body)
  "Report at load time a (reject CODE ...) or (defer CODE ...) in BODY whose
literal CODE has the wrong class."
  (let walk ((x body))
    (when (pair? x)
      (match x
        (('quote . _) #f)               ; data, not code
        (((and who (or 'reject 'defer)) (? integer? code) . _)
         (let ((class (if (eq? who 'reject) 5 4)))
           (unless (= (quotient code 100) class)
             (config-error "rule ~a ~s: (~a ~a ...) needs a ~axx code" stage name who code class))))
        (_ #f))
      (when (and (list? x) (not (eq? (car x) 'quote))) (for-each walk x)))))

(define-syntax rule
  (lambda (form)
    (syntax-case form ()
      ((_ stage name proc)
       (identifier? #'stage)
       (let* ((src (syntax-source form))
              (_ (check-literal-verdicts (syntax->datum #'stage) (syntax->datum #'name)
                                        (syntax->datum #'proc)))
              (where (and src (assq-ref src 'filename)
                          (format #f "~a:~a" (assq-ref src 'filename)
                                  (1+ (or (assq-ref src 'line) 0))))))
         #`(add-rule! 'stage name proc #,where))))))

;;; Verdicts.

(define-record-type <verdict>
  (make-verdict kind code text)
  verdict?
  (kind verdict-kind)
  (code verdict-code)
  (text verdict-text))

(define %next (make-verdict 'next #f #f))
(define %accept (make-verdict 'accept #f #f))
(define %discard (make-verdict 'discard #f #f))

(define (quarantine name)
  "Accept the message, then keep it in the spool's quarantine/NAME/ directory
instead of delivering it (logged with quarantine=NAME).  NAME: letters,
digits, dot, underscore and hyphen, not starting with a dot."
  (unless (and (string? name) (string-match "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$" name))
    (error (format #f "quarantine: invalid name ~s (letters, digits, . _ -, not starting with a dot)"
                   name)))
  (make-verdict 'quarantine #f name))

(define (next)
  "No decision: the next rule of the stage runs, then the built-in behaviour."
  %next)

(define (accept)
  "Skip the remaining rules of this stage."
  %accept)

(define (discard)
  "Accept the message, then drop it (logged)."
  %discard)

(define (check-reply who class code text)
  ;; The same checks as the server's (src/verdict.c), made here so that the
  ;; log names the rule that broke them.
  (unless (and (integer? code) (exact? code) (= (quotient code 100) class))
    (error (format #f "~a: the code must be a ~axx integer, got ~s" who class code)))
  (unless (string? text)
    (error (format #f "~a: the text must be a string, got ~s" who text)))
  (when (or (string-index text #\return) (string-index text #\newline))
    (error (format #f "~a: the text must not contain CR or LF: ~s" who text)))
  (when (> (string-utf8-length text) 500)
    (error (format #f "~a: the text is longer than 500 bytes" who)))
  (let ((m (string-match "^([245])\\.[0-9]{1,3}\\.[0-9]{1,3}( |$)" text)))
    (when (and m (not (= (string->number (match:substring m 1)) class)))
      (error (format #f "~a ~a: the enhanced status code must start with ~a: ~s" who code class text)))))

(define (reject code text)
  "Refuse with a 5xx CODE and TEXT, which may start with an enhanced status
code: (reject 550 \"5.7.1 Not here\")."
  (check-reply 'reject 5 code text)
  (make-verdict 'reject code text))

(define (defer code text)
  "Refuse for now with a 4xx CODE and TEXT: (defer 450 \"4.7.1 Try later\")."
  (check-reply 'defer 4 code text)
  (make-verdict 'defer code text))

;;; The session as rules see it: facts given by the server at each stage,
;;; and variables that live as long as the connection.

(define-record-type <session>
  (make-session facts vars message handle)
  session?
  (facts session-facts)
  (vars session-vars)
  (message session-message)
  (handle session-handle))                ; the live session, while its rules run

(define (fact s key) (assq-ref (session-facts s) key))
(define (client-address s) "The client's IP address, as text." (fact s 'client-address))
(define (client-port s) "The client's TCP port." (fact s 'client-port))
(define (local-address s) "The address the client connected to." (fact s 'local-address))
(define (local-port s) "The port the client connected to." (fact s 'local-port))
(define (helo-name s) "The HELO or EHLO name, or #f before it." (fact s 'helo))
(define (esmtp? s) "Did the client say EHLO?" (fact s 'esmtp))
(define (sender s)
  "The envelope sender (\"\" for <>), or #f before MAIL; in the mail stage, the
sender being given (after any set-sender!)."
  ((core '%session-sender) (session-handle s)))
(define (recipients s)
  "The recipients accepted so far, with the changes rules made."
  ((core '%session-recipients) (session-handle s)))

;;; Envelope changes (mail stage: the sender; rcpt and data stages: all).

(define (set-sender! s address)
  "Make ADDRESS (\"\" for the null sender) the envelope sender."
  ((core '%session-set-sender!) (session-handle s) address))

(define (add-recipient! s address)
  "Add ADDRESS as a recipient, routed like one given with RCPT (a local domain
for now): a blind copy, for instance (add-recipient! s \"archive@example.test\")."
  ((core '%session-add-recipient!) (session-handle s) address))

(define (remove-recipient! s address)
  "Remove the recipient ADDRESS; returns #t when it was there."
  ((core '%session-remove-recipient!) (session-handle s) address))

(define (deliver-to! s address mailbox)
  "Deliver recipient ADDRESS into MAILBOX, made by maildir or mbox (relative
templates are under the state directory), instead of the deliver-local one.
In the delivery stage the choice holds for this delivery attempt only."
  (unless (mailbox? mailbox)
    (error (format #f "deliver-to!: expected (maildir TEMPLATE) or (mbox TEMPLATE), got ~s" mailbox)))
  ;; The server puts a relative template under the state directory, as for
  ;; deliver-local.
  ((core '%session-deliver-to!) (session-handle s) address (mailbox-kind mailbox)
   (mailbox-template mailbox)))
(define (queue-id s)
  "The queue id, in the data, queued and delivery stages; #f before."
  (fact s 'queue-id))
(define (client-name s)
  "The client's host name, confirmed both ways (forward-confirmed reverse
DNS): a PTR name of the client's address whose A or AAAA records include
that address, or #f when there is none or DNS failed.  The first call waits
for the DNS without holding up other sessions; the answer is kept for the
connection."
  (let ((known (session-ref s '%client-name 'unknown)))
    (if (not (eq? known 'unknown))
        known
        (let* ((address (client-address s))
               (type (if (string-index address #\:) 'aaaa 'a))
               (names (dns-reverse address))
               (name (and (list? names)
                          (find (lambda (n)
                                  (let ((addresses (dns-lookup n type)))
                                    (and (list? addresses) (member address addresses))))
                                names))))
          (session-set! s '%client-name name)
          name))))

(define (tls? s)
  "Is the connection encrypted?  Always #f until STARTTLS exists."
  (fact s 'tls))
(define (authenticated-user s)
  "The user name the client authenticated as, or #f (always #f until AUTH exists)."
  (fact s 'authenticated-user))
(define (authenticated? s)
  "Did the client authenticate?  Always #f until AUTH exists."
  (and (authenticated-user s) #t))
(define (message-size s)
  "The message size in bytes, in the data, queued and delivery stages."
  (fact s 'size))

(define (session-ref s key . default)
  "A per-connection variable set by an earlier rule, or DEFAULT (#f)."
  (hash-ref (session-vars s) key (if (null? default) #f (car default))))

(define (session-set! s key value)
  "Set a per-connection variable that later rules can read."
  (hash-set! (session-vars s) key value))

;;; Headers, in the data stage.  The message object is valid only while the
;;; data rules run.

(define (header-ref msg name)
  "All values of the header NAME (case-insensitive), in order; '() if none."
  (unless (string? name)
    (error (format #f "header-ref: the name must be a string, got ~s" name)))
  ((core '%message-header-values) msg name))

(define (check-header who name value)
  (unless (and (string? name) (positive? (string-length name))
               (string-every (lambda (c) (and (char<? #\space c #\del) (not (char=? c #\:)))) name))
    (error (format #f "~a: invalid header name ~s" who name)))
  (unless (and (string? value) (not (string-index value #\nul)) (not (string-index value #\return)))
    (error (format #f "~a: the value must be a string without NUL or CR, got ~s" who value)))
  ;; A line break must fold the value: the next line starts with white space
  ;; and is not blank, or it would start a new field or end the header section.
  (let loop ((start 0))
    (let ((nl (string-index value #\newline start)))
      (when nl
        (let ((rest (substring value (1+ nl))))
          (unless (and (> (string-length rest) 0)
                       (memv (string-ref rest 0) '(#\space #\tab))
                       (not (string-every char-whitespace?
                                          (substring rest 0 (or (string-index rest #\newline)
                                                                (string-length rest))))))
            (error (format #f "~a: a line break in the value of ~a must be followed by a space or tab and text (folding)"
                           who name))))
        (loop (1+ nl))))))

(define* (header-add! msg name value #:key (position 'top))
  "Add the header NAME: VALUE, at the top (default) or the bottom of the header
section (#:position 'bottom).  A VALUE with line breaks must fold them (each
continuation line starting with a space or tab)."
  (check-header 'header-add! name value)
  ((core '%message-add-header!) msg name value (eq? position 'bottom)))

(define (header-remove! msg name)
  "Remove every header NAME (case-insensitive); returns how many."
  ((core '%message-remove-header!) msg name))

(define (header-has? msg name)
  "Is there at least one header NAME (case-insensitive)?"
  (pair? (header-ref msg name)))

(define (header-count msg name)
  "How many headers NAME (case-insensitive) the message has."
  (length (header-ref msg name)))

(define (header-set! msg name value)
  "Make NAME: VALUE the one header NAME: the first such field gets VALUE in
place and the others go; with none, it is added at the top.  Returns #t when
a field was replaced."
  (check-header 'header-set! name value)
  ((core '%message-set-header!) msg name value))

(define (header-rename! msg name new-name)
  "Rename every header NAME (case-insensitive) to NEW-NAME, keeping values
and positions: (header-rename! msg \"X-Spam\" \"X-Old-Spam\").  Returns how
many were renamed."
  (check-header 'header-rename! new-name "")
  ((core '%message-rename-header!) msg name new-name))

(define (log-message s fmt . args)
  "Write a line to the server's log, with the queue id when there is one."
  ((core '%log) (and s (queue-id s)) (apply format #f fmt args)))

;;; Running a stage (called by the server).

;;; Suspension.  A rule that waits for I/O (a DNS answer, a database, a
;;; timer) calls (suspend OPERATION ARGS...): the rules' continuation up to
;;; the stage's prompt is handed to the server, which starts OPERATION and
;;; resumes the continuation with its result from the GLib main loop.  Other
;;; sessions run meanwhile; the rule sees an ordinary procedure call.

(define policy-prompt (make-prompt-tag "guillemot-policy"))

(define policy-failure '(defer 451 "4.3.0 Temporary policy failure"))

(define (suspend operation . args)
  "Wait, without blocking the server, for OPERATION (a symbol the server
knows, such as @code{pause}) done with ARGS; return its result."
  (unless (symbol? operation)
    (error (format #f "suspend: the operation must be a symbol, got ~s" operation)))
  ;; Other sessions' rules run meanwhile: what runs here is known again after.
  (let ((rule current-rule) (stage current-stage) (session current-session))
    (let ((value (abort-to-prompt policy-prompt operation args)))
      (set! current-rule rule)
      (set! current-stage stage)
      (set! current-session session)
      value)))

(define (pause seconds)
  "Suspend this session for SECONDS (a real number, at most 600) without
holding up the others, then return #t: (pause 2) before a rejection slows
down a client that tries many addresses (tarpitting)."
  (unless (and (real? seconds) (>= seconds 0) (<= seconds 600))
    (error (format #f "pause: expected 0 to 600 seconds, got ~s" seconds)))
  (suspend 'pause (exact->inexact seconds)))

(define in-stage? #f)                    ; Scheme code of a stage is running
;; The rule running, for the log line of an interruption.
(define current-rule #f)
(define current-stage #f)
(define current-session #f)

;;; Time budget.  A watchdog thread of the server sends SIGALRM when Scheme
;;; code of a stage has run longer than #:rule-time-limit; the rule is then
;;; interrupted like any failing rule.  The interruption is an abort to a
;;; prompt of its own, not an exception: a rule's (catch #t ...) cannot
;;; swallow it.

(define time-limit-prompt (make-prompt-tag "guillemot-time-limit"))

(define (%on-alarm signal)
  ;; The stage the watchdog saw may have ended before this handler runs.
  (when (and in-stage? ((core '%rule-overdue?)))
    (abort-to-prompt time-limit-prompt)))

(define (interrupted)
  (let ((r current-rule))
    ((core '%log) (and current-session (fact current-session 'queue-id))
     (format #f "policy error: rule ~s (~a~a) failed: interrupted: it ran longer than #:rule-time-limit"
             (if r (rule-name r) "?") current-stage (if r (rule-place r) "")))
    (when r (trace-verdict r current-stage 'failed #f))
    policy-failure))

(define (rule-failed key args)
  (let ((r current-rule))
    ((core '%log) (and current-session (fact current-session 'queue-id))
     (format #f "policy error: rule ~s (~a~a) failed: ~a" (if r (rule-name r) "?") current-stage
             (if r (rule-place r) "") (describe-error key args)))
    (when r (trace-verdict r current-stage 'failed #f))
    policy-failure))

(define (under-prompt thunk)
  (set! in-stage? #t)
  (let ((result (catch #t
                  (lambda ()
                    (call-with-prompt time-limit-prompt
                      (lambda ()
                        (call-with-prompt policy-prompt
                          thunk
                          (lambda (k operation args) (list 'suspend k operation args))))
                      (lambda (k) (interrupted))))
                  (lambda (key . args) (rule-failed key args)))))
    (set! in-stage? #f)
    result))

(define (describe-error key args)
  (cond
   ((and (eq? key 'config-error) (pair? args) (string? (car args))) (car args))
   (else
      (string-trim-right
       (call-with-output-string (lambda (port) (print-exception port #f key args)))))))

(define (rule-place r)
  (if (rule-where r) (string-append ", " (rule-where r)) ""))



(define trace? #f)                       ; guillemot test-session: log each verdict

(define (%set-trace! on)
  (set! trace? on))

(define (trace-verdict r stage v start)
  (when trace?
    ((core '%log) #f
     (format #f "rule ~s (~a): ~a~a" (rule-name r) stage
             (cond ((verdict? v)
                    (if (verdict-code v)
                        (format #f "~a ~a ~a" (verdict-kind v) (verdict-code v) (verdict-text v))
                        (format #f "~a~a" (verdict-kind v)
                                (if (verdict-text v) (string-append " " (verdict-text v)) ""))))
                   ((eq? v 'failed) "failed")
                   (else (format #f "~s (not a verdict)" v)))
             (if start
                 (format #f ", ~a ms"
                         (/ (round (/ (* 1000000 (- (get-internal-real-time) start))
                                      internal-time-units-per-second))
                            1000.0))
                 "")))))

(define (run-rules rule-set stage session args)
  (let loop ((rs rule-set))
    (cond
     ((null? rs) '(next #f #f))
     ((not (eq? (rule-stage (car rs)) stage)) (loop (cdr rs)))
     (else
      (set! current-rule (car rs))
      (set! current-stage stage)
      (set! current-session session)
      ;; An error stops the stage: under-prompt's one catch logs it, naming
      ;; current-rule (cheaper than a catch around each rule).
      (let* ((r (car rs))
             (start (and trace? (get-internal-real-time)))
             (v (apply (rule-proc r) session args)))
        (trace-verdict r stage v start)
        (cond
         ((not (verdict? v))
          ((core '%log) (fact session 'queue-id)
           (format #f "policy error: rule ~s (~a~a) returned ~s, not a verdict" (rule-name r) stage
                   (rule-place r) v))
          policy-failure)
         ((eq? (verdict-kind v) 'next) (loop (cdr rs)))
         (else (list (verdict-kind v) (verdict-code v) (verdict-text v)))))))))

(define (%run-stage rule-set stage facts vars message handle args)
  "Run the rules of STAGE in RULE-SET.  Returns (KIND CODE TEXT), or
(suspend K OPERATION ARGS) when a rule waits for OPERATION."
  (let ((session (make-session facts vars message handle)))
    (under-prompt (lambda () (run-rules rule-set stage session args)))))

(define (%resume k value)
  "Go on with suspended rules, OPERATION having answered VALUE."
  (under-prompt (lambda () (k value))))
