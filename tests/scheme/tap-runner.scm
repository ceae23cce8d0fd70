;;; tests/scheme/tap-runner.scm — SRFI-64 results printed as TAP.
;;;
;;; A test file uses (srfi srfi-64), includes this file (the name is
;;; relative to the test file), and wraps its tests in one top-level group
;;; named after the suite:
;;;
;;;   (use-modules (srfi srfi-64) (guillemot address))
;;;   (include "tap-runner.scm")
;;;   (test-begin "address")
;;;   (test-equal "domain is lower-cased" "example.test" (address-domain "a@EXAMPLE.test"))
;;;   (test-end "address")
;;;
;;; Each test prints "ok N - SUITE: NAME" or "not ok N - SUITE: NAME", with
;;; nested group names as "SUITE: GROUP / NAME", and a failure's details as
;;; "# " lines.  The end of the top-level group prints the plan "1..N" and
;;; exits with status 1 when anything failed.  tests/scheme/run-srfi64 runs
;;; several files and numbers their lines as one stream.

(use-modules (srfi srfi-64)
             (ice-9 pretty-print))

(define (tap-test-runner)
  "An SRFI-64 test runner that prints TAP on the current output port."
  (let ((runner (test-runner-null))
        (number 0)
        (failures 0))

    (define (say fmt . args)
      (apply format #t fmt args)
      (newline)
      (force-output))

    ;; Every line of TEXT as a "# " comment, after LABEL on the first.
    (define (comment label text)
      (let ((lines (string-split (string-trim-right text #\newline) #\newline)))
        (say "#   ~a~a" label (car lines))
        (for-each (lambda (line)
                    (say "#   ~a~a" (make-string (string-length label) #\space) line))
                  (cdr lines))))

    (define (show value)
      (string-trim-right
       (call-with-output-string (lambda (port) (pretty-print value port)))))

    (define (error-text error)
      (if (pair? error)
          (string-trim-right
           (call-with-output-string
             (lambda (port)
               (false-if-exception (print-exception port #f (car error) (cdr error))))))
          (show error)))

    (define (description r)
      (let* ((path (test-runner-group-path r))
             (name (test-runner-test-name r))
             (name (if (and (string? name) (not (string-null? name)))
                       name
                       (let ((form (test-result-ref r 'source-form)))
                         (if form (format #f "~s" form) "(unnamed)"))))
             (inner (append (if (pair? path) (cdr path) '()) (list name))))
        (format #f "~a: ~a"
                (if (pair? path) (car path) "tests")
                (string-join (map (lambda (part) (format #f "~a" part)) inner) " / "))))

    (define (details r)
      (let ((file (test-result-ref r 'source-file))
            (line (test-result-ref r 'source-line)))
        (when file
          (say "#   at ~a~a" file (if line (format #f ":~a" line) ""))))
      (let ((form (test-result-ref r 'source-form)))
        (when form (comment "form:     " (show form))))
      (let ((alist (test-result-alist r)))
        (when (assq 'expected-value alist)
          (comment "expected: " (show (test-result-ref r 'expected-value))))
        (when (assq 'expected-error alist)
          (comment "expected: an error " (show (test-result-ref r 'expected-error))))
        (when (assq 'actual-value alist)
          (comment "actual:   " (show (test-result-ref r 'actual-value))))
        (when (assq 'actual-error alist)
          (comment "error:    " (error-text (test-result-ref r 'actual-error))))))

    (test-runner-on-test-end! runner
      (lambda (r)
        (set! number (1+ number))
        (let ((text (description r)))
          (case (test-result-kind r)
            ((pass) (say "ok ~a - ~a" number text))
            ((xfail) (say "ok ~a - ~a # expected failure" number text))
            ((skip) (say "ok ~a - ~a # SKIP" number text))
            ((xpass)
             (set! failures (1+ failures))
             (say "not ok ~a - ~a # passed but was expected to fail" number text))
            (else
             (set! failures (1+ failures))
             (say "not ok ~a - ~a" number text)
             (details r))))))

    (test-runner-on-bad-count! runner
      (lambda (r count expected)
        (set! number (1+ number))
        (set! failures (1+ failures))
        (say "not ok ~a - ~a: ~a tests run, test-end expected ~a"
             number (string-join (map (lambda (g) (format #f "~a" g)) (test-runner-group-path r)) " / ")
             count expected)))

    (test-runner-on-bad-end-name! runner
      (lambda (r name other-name)
        ;; Implementations disagree on the order of the two names.
        (set! number (1+ number))
        (set! failures (1+ failures))
        (say "not ok ~a - test-begin and test-end names differ: ~s, ~s" number name other-name)))

    (test-runner-on-final! runner
      (lambda (r)
        (say "1..~a" number)
        (say "# ~a passed, ~a failed" (- number failures) failures)
        (unless (zero? failures)
          (exit 1))))

    runner))

(test-runner-factory tap-test-runner)
