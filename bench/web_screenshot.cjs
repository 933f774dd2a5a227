// The README's picture of the web page after training: opens the page's autorun URL in headless
// Chromium through puppeteer-core (from npm), waits for the page's `shadertrain-result` line, and
// saves a full-page screenshot.
//
//   NODE_PATH=DIR/node_modules node bench/web_screenshot.cjs URL OUT.png
//
// URL: a page `shadertrain web` serves, e.g. `http://127.0.0.1:8080/?autorun=1&data=data/
// &preset=convnet&epochs=2&classify=1`, with the data files under the served folder's data/.
const puppeteer = require('puppeteer-core');

(async () => {
  const [url, out] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--enable-unsafe-webgpu'],
    defaultViewport: { width: 1040, height: 900 },
  });
  try {
    const page = await browser.newPage();
    const result = new Promise((resolve) => page.on('console', (message) => {
      if (message.text().startsWith('shadertrain-result')) resolve(message.text());
    }));
    await page.goto(url);
    console.log(await result);
    await page.screenshot({ path: out, fullPage: true });
  } finally {
    await browser.close();
  }
})();
