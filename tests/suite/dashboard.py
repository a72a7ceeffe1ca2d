"""Drives the KeelMQ dashboard in a real headless Chromium (Selenium): log in, see a chart with
data, find the client the test connected and kick it, test a rule's SQL and create the rule,
see the durability page's histograms. Saves a screenshot of every page.

Usage: dashboard.py BASE_URL ADMIN_PASSWORD CLIENT_ID SCREENSHOT_DIR
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, password, client_id, shots = sys.argv[1:5]
os.makedirs(shots, exist_ok=True)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
    options.add_argument(arg)
driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
wait = WebDriverWait(driver, 30)


def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))


def text_in(selector, text):
    return wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))


try:
    driver.get(base + "/")
    # A wrong password is refused on the page.
    wait.until(EC.presence_of_element_located((By.ID, "password"))).send_keys("wrong")
    driver.find_element(By.ID, "login-button").click()
    text_in("#login-error", "wrong")
    field = driver.find_element(By.ID, "password")
    field.clear()
    field.send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    wait.until(EC.visibility_of_element_located((By.ID, "nav")))

    # Overview: a chart with data (the sampler runs every second in this test). The page is
    # reloaded every few seconds until its chart has two samples, each load given time to
    # finish on a busy machine.
    driver.get(base + "/#overview")
    loaded = [time.monotonic()]

    def chart_has_data(d):
        charts = d.find_elements(By.CSS_SELECTOR, "svg#chart-messages")
        if charts and int(charts[0].get_attribute("data-points") or 0) >= 6:
            return True
        if time.monotonic() - loaded[0] > 4:
            d.refresh()
            loaded[0] = time.monotonic()
        return False
    WebDriverWait(driver, 60, poll_frequency=0.5).until(chart_has_data)
    shot("overview")

    # Clients: the test's client, its detail, kicked.
    driver.get(base + "/#clients")
    text_in("#client-list", client_id)
    for row in driver.find_elements(By.CSS_SELECTOR, "#client-list tr.clickable"):
        if client_id in row.text:
            row.click()
            break
    text_in("#client-card", "Subscriptions")
    shot("client")
    driver.find_element(By.ID, "kick").click()
    text_in("#kicked", "kicked")

    # Rules: test the SQL against sample input, then create the rule.
    driver.get(base + "/#rules")
    wait.until(EC.presence_of_element_located((By.ID, "rule-test"))).click()
    text_in("#rule-result", '"t": 35')
    driver.find_element(By.ID, "rule-id").send_keys("dash_rule")
    driver.find_element(By.ID, "rule-create").click()
    text_in("#main table", "dash_rule")
    shot("rules")

    for page, marker in (("subscriptions", "Topics"), ("retained", "Retained"), ("bridges", "Sinks"),
                         ("access", "ACL"), ("durability", "fdatasync latency")):
        driver.get(base + "/#" + page)
        text_in("#main", marker)
        shot(page)
    assert int(driver.find_element(By.ID, "hist-fsync").get_attribute("data-points")) > 0
    print("OK")
except Exception:
    shot("failure")
    print(driver.page_source[:4000], file=sys.stderr)
    raise
finally:
    driver.quit()
