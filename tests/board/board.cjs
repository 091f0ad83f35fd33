// The board (B-3) in headless Chromium, driven by playwright-core (pinned in
// tests/clis/package.json). Started by tests/board.rs with:
//   BOARD_URL       the daemon's root, http://127.0.0.1:<port>
//   BOARD_TOKEN     the admin token
//   BOARD_SCENARIO  "seeded" (read-only, sign-in, CSRF) or "local" (the
//                   tracker's UI: new item, Approve, Confirm Deploy)
//   BOARD_EXPECT    JSON: seeded: [{work_item, stage}], the lease's work item
//   BOARD_SCREENSHOT where to save a screenshot of the board (optional)
//   CHROMIUM        the browser (default /usr/bin/chromium)
// Prints one `ok:` line per check and exits non-zero at the first failure.
'use strict';

const http = require('http');
const path = require('path');
const { createRequire } = require('module');

const requireClis = createRequire(path.join(__dirname, '..', 'clis', 'package.json'));
const { chromium } = requireClis('playwright-core');

const URL_ = process.env.BOARD_URL;
const TOKEN = process.env.BOARD_TOKEN;
const SCENARIO = process.env.BOARD_SCENARIO;
const EXPECT = JSON.parse(process.env.BOARD_EXPECT || '{}');
const SHOT = process.env.BOARD_SCREENSHOT;

function ok(msg) {
  console.log(`ok: ${msg}`);
}

function check(cond, msg) {
  if (!cond) throw new Error(`FAILED: ${msg}`);
  ok(msg);
}

// A POST made from inside the page (same origin): what a script of ours, or
// an injected one without the CSRF token, could send.
async function postFromPage(page, url, headers) {
  return page.evaluate(async ([u, h]) => {
    const r = await fetch(u, { method: 'POST', credentials: 'same-origin', headers: h });
    return r.status;
  }, [url, headers || {}]);
}

async function signIn(page) {
  await page.fill('#sign-in input[name=token]', TOKEN);
  await Promise.all([
    page.waitForNavigation(),
    page.click('#sign-in button[type=submit]'),
  ]);
  await page.waitForSelector('#signed-in', { state: 'visible' });
  ok('signed in through the form');
}

// A hostile page on another origin of the same host (same site: SameSite
// alone would let the cookie through): it posts a form to the daemon.
function attacker(target) {
  const html = `<!doctype html><body>
    <form id=f method=post action="${target}"><input name=x value=1></form>
    <script>document.getElementById('f').submit()</script></body>`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(req.url === '/quiet' ? '<!doctype html><p>nothing here</p>' : html);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function seeded(page) {
  const { tasks, leased } = EXPECT;
  await page.goto(`${URL_}/`);
  for (const t of tasks) {
    await page.waitForSelector(
      `.column[data-stage="${t.stage}"] .card[data-work-item="${t.work_item}"]`);
  }
  ok(`the ${tasks.length} seeded tasks are in their stage columns`);
  const wrong = await page.$$eval('.card', (cards, want) => cards.filter((c) => {
    const w = want.find((t) => t.work_item === c.dataset.workItem);
    return w && c.closest('.column').dataset.stage !== w.stage;
  }).length, tasks);
  check(wrong === 0, 'no task is in another column');
  const leaseText = await page.textContent(`.card[data-work-item="${leased}"] .lease`);
  check(/reviewer|review/.test(leaseText), `the lease shows on ${leased}: ${leaseText.trim()}`);

  // Read-only: no action button, the sign-in form, and an action refused.
  check(await page.isVisible('#sign-in'), 'signed out: the sign-in form shows');
  check((await page.$$('button[data-action]')).length === 0, 'signed out: no action button');
  const release = `/transition-lease/release?work_item=${leased}`;
  check(await postFromPage(page, release) === 401, 'signed out: a POST to an admin route is 401');

  // A wrong token does not sign in.
  await page.fill('#sign-in input[name=token]', 'not-the-token');
  const [wrongRes] = await Promise.all([
    page.waitForNavigation(),
    page.click('#sign-in button[type=submit]'),
  ]);
  check(wrongRes.status() === 401, 'a wrong token is refused (401)');
  await page.goto(`${URL_}/`);
  await page.waitForSelector('#sign-in', { state: 'visible' });

  await signIn(page);
  const cookies = await page.context().cookies();
  const c = cookies.find((k) => k.name === 'orch_session');
  check(c && c.httpOnly && c.sameSite === 'Strict' && c.path === '/', 'the cookie is HttpOnly, SameSite=Strict, Path=/');
  check(!c.value.includes(TOKEN), 'the cookie does not hold the token');
  check(!(await page.evaluate(() => document.cookie)).includes('orch_session'), 'scripts cannot read the cookie');
  await page.waitForSelector(`button[data-action="release-lease"][data-work-item="${leased}"]`);
  ok('signed in: the action buttons show');

  // Forged: the cookie alone (no CSRF token), or a wrong one, is refused.
  check(await postFromPage(page, release) === 403, 'a POST with the cookie but no CSRF token is 403');
  check(await postFromPage(page, release, { 'X-CSRF-Token': 'forged' }) === 403, 'a wrong CSRF token is 403');

  // Forged from another origin of the same host: a form post carries the
  // cookie (same site) but neither the token nor our Origin.
  const server = await attacker(`${URL_}${release}`);
  const evil = `http://127.0.0.1:${server.address().port}/`;
  const forged = await page.context().newPage();
  const [resp] = await Promise.all([
    forged.waitForResponse((r) => r.url().startsWith(`${URL_}/transition-lease/release`)),
    forged.goto(evil),
  ]);
  check(resp.status() === 401 || resp.status() === 403, `a cross-origin form post is refused (${resp.status()})`);
  // A cross-origin fetch that tries to send a CSRF header needs a preflight
  // we never grant: it does not reach the route.
  await forged.goto(`${evil}quiet`);
  const sent = await forged.evaluate(async (u) => {
    try {
      await fetch(u, { method: 'POST', credentials: 'include', headers: { 'X-CSRF-Token': 'x' } });
      return 'sent';
    } catch (_) {
      return 'blocked';
    }
  }, `${URL_}${release}`);
  check(sent === 'blocked', 'a cross-origin fetch with a CSRF header is blocked');
  await forged.close();
  server.close();
  await page.reload();
  await page.waitForSelector(`.card[data-work-item="${leased}"] .lease`);
  ok('the lease is still held after the forged posts');

  if (SHOT) {
    await page.click(`.card[data-work-item="${EXPECT.details}"]`);
    await page.waitForSelector('#details-artifacts a');
    await page.screenshot({ path: SHOT, fullPage: false });
    ok(`screenshot saved to ${SHOT}`);
    await page.click('#details-close');
  }

  // The real action, pressed in the page.
  await page.click(`button[data-action="release-lease"][data-work-item="${leased}"]`);
  await page.waitForSelector(`.card[data-work-item="${leased}"] .lease`, { state: 'detached' });
  ok('Release lease pressed: the lease is gone from the board');

  // The artifacts of a task are listed and open as text.
  await page.click(`.card[data-work-item="${EXPECT.details}"]`);
  await page.waitForSelector('#details-artifacts a');
  const links = await page.$$eval('#details-artifacts a', (as) => as.map((a) => a.textContent));
  check(links.includes('01-brd.md'), `the artifacts are listed: ${links.join(', ')}`);
  const refused = await page.textContent('#details-artifacts');
  check(/symlink/.test(refused), 'a symlink in the artifact dir is shown refused');

  // Sign out: the buttons go, the old session is dead.
  const csrf = await page.evaluate(async () => (await (await fetch('/board/data')).json()).csrf);
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in', { state: 'visible' });
  check((await page.$$('button[data-action]')).length === 0, 'signed out: the buttons are gone');
  await page.context().addCookies([{ ...c }]);
  check(await postFromPage(page, release, { 'X-CSRF-Token': csrf }) === 401, 'the signed-out session is refused (401)');
}

async function local(page) {
  const { project, title } = EXPECT;
  await page.goto(`${URL_}/`);
  await signIn(page);
  await page.waitForSelector('#new-item', { state: 'visible' });
  await page.selectOption('#new-item-form select[name=project]', project);
  await page.fill('#new-item-form input[name=title]', title);
  await page.fill('#new-item-form textarea[name=description]', 'made in the board');
  await page.click('#new-item-form button[type=submit]');
  const card = page.locator('.card', { hasText: title });
  await card.waitFor();
  const item = await card.getAttribute('data-work-item');
  ok(`work item ${item} created in the page`);
  const approve = page.locator(`button[data-action="approved"][data-work-item="${item}"]`);
  await approve.waitFor({ timeout: 120000 });
  ok('the analysis gate shows Approve');
  if (SHOT) {
    await page.screenshot({ path: SHOT });
    ok(`screenshot saved to ${SHOT}`);
  }
  await approve.click();
  ok('Approve pressed');
  const deploy = page.locator(`button[data-action="confirm_deploy"][data-work-item="${item}"]`);
  await deploy.waitFor({ timeout: 180000 });
  ok('the deploy gate shows Confirm Deploy');
  await deploy.click();
  ok('Confirm Deploy pressed');
  await page.waitForSelector(`.column[data-stage="done"] .card[data-work-item="${item}"]`, { timeout: 180000 });
  ok(`${item} reached done`);
  const merged = await page.textContent(`.card[data-work-item="${item}"] .merge`);
  check(/merged [0-9a-f]{7,}/.test(merged), `the card shows the merge commit: ${merged}`);
  console.log(`WORK_ITEM=${item}`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  let failed = false;
  try {
    const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(20000);
    page.on('pageerror', (e) => {
      failed = true;
      console.log(`page error: ${e.message}`);
    });
    page.on('dialog', (d) => d.accept());
    if (SCENARIO === 'seeded') await seeded(page);
    else if (SCENARIO === 'local') await local(page);
    else throw new Error(`unknown BOARD_SCENARIO ${SCENARIO}`);
    if (failed) throw new Error('the page threw an error (see above)');
    console.log('BOARD OK');
  } catch (e) {
    console.log(e.stack || String(e));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
  // A server or timer left open by a failed check must not keep node up.
  process.exit(process.exitCode || 0);
})();
