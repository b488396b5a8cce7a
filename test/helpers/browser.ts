/**
 * A real browser for login tests: Debian's chromium driven by playwright-core (never a downloaded
 * browser). `*.gatehouse.test` resolves to 127.0.0.1 inside the browser, so tests can use several host
 * names (separate cookie jars) against servers on loopback ports.
 */
import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';

/** Where Debian installs chromium. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Default bound for every browser wait, in ms. */
export const WAIT = 15_000;

/** Launches chromium headless; closed when the test ends. Fails loudly when chromium is missing. */
export async function launchBrowser(t: TestContext): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM_PATH`,
    );
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-gpu',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--host-resolver-rules=MAP *.gatehouse.test 127.0.0.1',
      // Plain-HTTP test hosts must not be upgraded to HTTPS.
      '--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable',
    ],
  });
  t.after(() => browser.close());
  return browser;
}

/** A fresh context (own cookie jar) and page with bounded waits. */
export async function newPage(browser: Browser): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  const page = await context.newPage();
  return { context, page };
}

/** Fills the provider's sign-in form (any password works) and waits for the next page to load. */
export async function signIn(page: Page, user: string): Promise<void> {
  await page.waitForSelector('input[name="login"]', { timeout: WAIT });
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any-password');
  await Promise.all([page.waitForNavigation({ timeout: WAIT }), page.click('button[type="submit"]')]);
}

/** The JSON body of the current page (the test app answers JSON). */
export async function pageJson<T = Record<string, unknown>>(page: Page): Promise<T> {
  const text = (await page.textContent('body')) ?? '';
  return JSON.parse(text) as T;
}
