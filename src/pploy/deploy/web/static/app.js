/*
 * pploy page behaviours: lock countdowns, live-refreshed page sections, confirmations and the
 * user picker. Plain JavaScript, no build step; every page works without it (forms submit,
 * pages reload), this only makes them nicer.
 */
(function () {
  'use strict';

  const REFRESH_MS = 5000;

  document.documentElement.classList.add('js');

  // --- countdowns ----------------------------------------------------------------------------

  // "18 min left" (minutes rounded up), "45 s left" in the last minute: "18:53" would read as a
  // time of day. The wording comes from the page (data-text-*, translated by the server).
  function formatLeft(seconds, el) {
    if (seconds >= 60) {
      return (el.dataset.textMin || '%s min left').replace('%s', String(Math.ceil(seconds / 60)));
    }
    return (el.dataset.textSec || '%s s left').replace('%s', String(seconds));
  }

  // One timer for the page; it re-queries the DOM each tick, so elements swapped in by the live
  // refresh are picked up without any bookkeeping.
  function updateCountdowns() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll('.countdown[data-expires-at]')) {
      const expires = parseFloat(el.dataset.expiresAt);
      if (!Number.isFinite(expires)) continue;
      // Round up: "1 s left" until the very last second, then "expired".
      const left = Math.ceil(expires - now);
      const text = left > 0 ? formatLeft(left, el) : el.dataset.expiredText || 'expired';
      if (el.textContent !== text) el.textContent = text;
      el.classList.toggle('countdown-expired', left <= 0);
    }
  }

  let countdownTimer = 0;

  function startCountdowns() {
    clearInterval(countdownTimer);
    updateCountdowns();
    countdownTimer = setInterval(updateCountdowns, 1000);
  }

  // --- live sections -------------------------------------------------------------------------

  // The last server HTML seen for each [data-live] id. Compared against the freshly fetched
  // markup rather than the live DOM, because scripts (countdowns, the log viewer) change the
  // live DOM every second and would make every refresh look like a change.
  const serverHtml = new Map();
  let refreshing = false;

  function snapshotLive() {
    for (const el of document.querySelectorAll('[data-live][id]')) {
      if (!serverHtml.has(el.id)) serverHtml.set(el.id, el.outerHTML);
    }
  }

  function isTypingIn(el) {
    const active = document.activeElement;
    return !!active && el.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  async function refreshLive() {
    if (refreshing || !document.querySelector('[data-live][id]')) return;
    refreshing = true;
    try {
      const response = await fetch(location.href, {
        headers: { Accept: 'text/html' },
        credentials: 'same-origin',
        cache: 'no-store',
      });
      // A redirect (e.g. to a login page) or an error is not a fresh copy of this page.
      if (!response.ok || response.redirected) return;
      const doc = new DOMParser().parseFromString(await response.text(), 'text/html');
      let swapped = false;
      for (const el of document.querySelectorAll('[data-live][id]')) {
        const fresh = doc.getElementById(el.id);
        if (!fresh) continue;
        const html = fresh.outerHTML;
        if (html === serverHtml.get(el.id)) continue;
        if (isTypingIn(el)) continue; // try again next time, after the user is done
        if (el.id === 'log' || el.querySelector('#log')) continue; // never rebuild the log viewer
        el.replaceWith(document.importNode(fresh, true));
        serverHtml.set(el.id, html);
        swapped = true;
      }
      if (swapped) {
        startCountdowns();
        document.dispatchEvent(new CustomEvent('pploy:live-updated'));
      }
    } catch (err) {
      // Network hiccup: the next tick tries again.
    } finally {
      refreshing = false;
    }
  }

  function startLive() {
    snapshotLive();
    setInterval(() => {
      if (document.visibilityState === 'visible') refreshLive();
    }, REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') refreshLive();
    });
    document.addEventListener('pploy:job-ended', () => {
      // A finished job cannot be cancelled: drop the button even if the page is not live.
      const cancel = document.getElementById('cancel-form');
      if (cancel) cancel.hidden = true;
      refreshLive();
    });
  }

  // --- forms ---------------------------------------------------------------------------------

  // Delegated on document so forms inside swapped-in live sections work too.
  document.addEventListener('submit', (e) => {
    const form = e.target;
    const message = (e.submitter && e.submitter.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) e.preventDefault();
  });

  document.addEventListener('change', (e) => {
    const picker = e.target;
    if (picker.id !== 'user-picker' || !picker.form) return;
    // requestSubmit fires the submit event (so data-confirm still applies); submit() does not.
    if (picker.form.requestSubmit) picker.form.requestSubmit();
    else picker.form.submit();
  });

  function init() {
    startLive(); // first: it snapshots the server's markup before countdowns change it
    startCountdowns();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
